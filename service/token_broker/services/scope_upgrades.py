"""Scopes a caller needs and the grant lacks: 403 `scope_not_granted`, with the link that adds them.

The scopes an account holds are the ones Google granted (the token response's `scope`;
users can untick scopes on the consent screen). A token request naming scopes
(`?scope=`, repeatable) and a listing (which needs one of Gmail's read scopes) are
checked against them before anything is handed out or asked of Gmail, through the one
equivalence rule of `token_broker.scopes`. The answer's `authorization_url` is a signed
re-authorization link for the account that asks for the missing scopes with incremental
authorization (`include_granted_scopes=true`, the account's `login_hint`, bound to its
subject): completed, the account's scopes grow; no second account appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from token_broker.errors import BrokerError, ScopeNotAllowed, ScopeNotGranted
from token_broker.scopes import google_name, google_names, missing
from token_broker.services.reauthorization import ReauthorizationLinks
from token_broker.services.token_cache import CachedToken


class ScopeUpgrades:
    def __init__(self, links: ReauthorizationLinks, allowed: Sequence[str]) -> None:
        self.links = links
        self.allowed = tuple(allowed)

    def require(self, token: CachedToken, needed: Sequence[str], client_id: str | None) -> None:
        """Every scope of `needed` is granted, or 403 with the link that adds the missing."""
        if not needed:
            return
        lacking = missing(needed, token.scopes)
        if lacking:
            raise self._problem(token, lacking, client_id)

    def require_any(
        self, token: CachedToken, accepted: Iterable[str], client_id: str | None
    ) -> None:
        """One scope of `accepted` is granted, or 403 with a link asking for the first of
        them the broker may request."""
        accepted_names = set(google_names(accepted))
        if not accepted_names or accepted_names & set(google_names(token.scopes)):
            return
        askable = [scope for scope in self.allowed if google_name(scope) in accepted_names]
        raise self._problem(token, askable[:1] or sorted(accepted_names)[:1], client_id)

    def _problem(
        self, token: CachedToken, lacking: Sequence[str], client_id: str | None
    ) -> BrokerError:
        not_allowed = missing(lacking, self.allowed)
        if not_allowed:
            return ScopeNotAllowed(
                f"The account lacks {' '.join(not_allowed)}, which the broker may not request "
                "(not in TOKEN_BROKER_SCOPES).",
                scopes_not_allowed=list(not_allowed),
            )
        names = list(google_names(lacking))
        return ScopeNotGranted(
            f"The account's grant lacks {' '.join(names)}; send the user to "
            "authorization_url to add it (the account stays the same).",
            missing_scopes=names,
            authorization_url=self.links.url(
                account_id=token.account_id,
                login_hint=token.email,
                client_id=client_id,
                scopes=names,
            ),
        )
