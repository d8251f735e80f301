"""Re-authorization links: where the problems that need the user back at consent send them.

`reauthorization_required`, `no_refresh_token`, `code_exchange_failed`,
`scope_not_granted` and `account_mismatch` carry an `authorization_url` that points
at the broker, not at the provider: a signed, expiring link (HS256 JWT, lifetime
TOKEN_BROKER_REAUTHORIZATION_LINK_TTL_SECONDS) naming the account it reconnects
(when one is known), the email to preselect, and the API client whose request
produced it. Producing one is a computation: a 409 writes nothing to the database.

Opening the link (`GET /v1/oauth/reauthorize?link=…`) mints a fresh one-time state
for that opening alone, bound to the account's subject, and redirects to the
provider. A state opened, cancelled or burned by someone else is never the owner's:
each opening has its own, so nothing done with one link stops the next opening.
Completing a bound flow as another Google account stores nothing (`account_mismatch`).

The signing keys are derived from the keyring (HKDF, one per key id), so every
replica accepts every other's links, and a link signed before a key rotation keeps
working while the old key stays loaded.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey

from token_broker.errors import BrokerError, InvalidLink
from token_broker.services.authorizations import AuthorizationService, ReconnectTarget
from token_broker.store.database import Database
from token_broker.store.repositories import AccountRepository
from token_broker.store.sealing import Keyring

log = logging.getLogger("token_broker.reauthorization")

KEY_PURPOSE = "token-broker reauthorization link v1"
ISSUER = "token-broker"
AUDIENCE = "token-broker:reauthorize"
LINK_PARAMETER = "link"
MAX_LINK_LENGTH = 2048
MAX_LINK_SCOPES = 20
Problem = TypeVar("Problem", bound=BrokerError)


def link_endpoint(redirect_uri: str) -> str:
    """The link route beside the callback: `…/v1/oauth/callback` -> `…/v1/oauth/reauthorize`.

    The callback URL is the one public address of the broker the operator registers,
    so the route next to it is reachable wherever the callback is.
    """
    parts = urlsplit(redirect_uri)
    path = parts.path.rsplit("/", 1)[0] + "/reauthorize"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class LinkClaims:
    account_id: str | None
    login_hint: str | None
    client_id: str | None
    expires_at: int
    scopes: tuple[str, ...] = ()  # to add (incremental authorization); none: reconnect


class ReauthorizationLinks:
    def __init__(
        self,
        *,
        authorizations: AuthorizationService,
        database: Database,
        keyring: Keyring,
        endpoint: str,
        lifetime_seconds: int,
    ) -> None:
        self.authorizations = authorizations
        self.database = database
        self.endpoint = endpoint
        self.lifetime_seconds = lifetime_seconds
        keys = {
            kid: OctKey.import_key(key, {"kid": kid, "alg": "HS256"})
            for kid, key in keyring.derive(KEY_PURPOSE).items()
        }
        self._signing_kid = keyring.primary_kid
        self._signing_key = keys[keyring.primary_kid]
        self._keys = KeySet(list(keys.values()))

    def __repr__(self) -> str:
        return f"ReauthorizationLinks(endpoint={self.endpoint!r})"

    # ------------------------------------------------------------------ producing

    def url(
        self,
        *,
        account_id: str | None,
        login_hint: str | None,
        client_id: str | None,
        scopes: Sequence[str] = (),
    ) -> str:
        """A link for the account (None: a first connect, bound to nothing but its client);
        with `scopes`, one that adds them to the account's grant."""
        claims = LinkClaims(
            account_id=account_id,
            login_hint=login_hint,
            client_id=client_id,
            expires_at=int(time.time()) + self.lifetime_seconds,
            scopes=tuple(scopes),
        )
        return self._url(claims)

    def for_caller(self, problem: Problem, client_id: str | None) -> Problem:
        """`problem` with its link signed as produced by `client_id`'s request.

        A refresh is shared by every caller waiting on it, and so is the problem it
        raises; each caller gets its own copy, naming itself.
        """
        claims = self._claims_of_url(problem.authorization_url)
        if claims is None or claims.client_id == client_id:
            return problem
        bound = copy.copy(problem)
        bound.authorization_url = self._url(replace(claims, client_id=client_id))
        return bound

    def _url(self, claims: LinkClaims) -> str:
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": claims.expires_at,
            "acct": claims.account_id,
            "hint": claims.login_hint,
            "cid": claims.client_id,
            "scp": list(claims.scopes) or None,
        }
        token = jwt.encode(
            {"alg": "HS256", "kid": self._signing_kid},
            {name: value for name, value in payload.items() if value is not None},
            self._signing_key,
        )
        return f"{self.endpoint}?{urlencode({LINK_PARAMETER: token})}"

    # ------------------------------------------------------------------ opening

    def read(self, link: str) -> LinkClaims:
        """The link's claims, if it is one of ours, unaltered and unexpired."""
        if not link or len(link) > MAX_LINK_LENGTH:
            raise InvalidLink()
        try:
            token = jwt.decode(link, self._keys, algorithms=["HS256"])
            jwt.JWTClaimsRegistry(
                leeway=0,
                iss={"essential": True, "value": ISSUER},
                aud={"essential": True, "value": AUDIENCE},
                exp={"essential": True},
            ).validate(token.claims)
        except (JoseError, ValueError, TypeError):
            raise InvalidLink() from None
        claims = token.claims

        def text(name: str) -> str | None:
            value = claims.get(name)
            return value if isinstance(value, str) and value else None

        scopes = claims.get("scp") or []
        if not isinstance(scopes, list) or len(scopes) > MAX_LINK_SCOPES:
            raise InvalidLink()
        return LinkClaims(
            account_id=text("acct"),
            login_hint=text("hint"),
            client_id=text("cid"),
            expires_at=int(claims["exp"]),
            scopes=tuple(scope for scope in scopes if isinstance(scope, str) and scope),
        )

    async def open(self, link: str) -> str:
        """A fresh flow for this opening; returns where to send the browser (the provider)."""
        claims = self.read(link)
        target = None
        login_hint = claims.login_hint
        if claims.account_id is not None:
            async with self.database.transaction() as session:
                account = await AccountRepository(session).get(claims.account_id)
            if account is None:
                raise InvalidLink("The account this link was for no longer exists.")
            target = ReconnectTarget(account.id, account.subject)
            login_hint = account.email or login_hint
        url = await self.authorizations.start_from_link(
            client_id=claims.client_id, login_hint=login_hint, target=target, adding=claims.scopes
        )
        log.info(
            "re-authorization link opened",
            extra={"account_id": claims.account_id, "client_id": claims.client_id},
        )
        return url

    def _claims_of_url(self, url: str | None) -> LinkClaims | None:
        if url is None or not url.startswith(self.endpoint + "?"):
            return None
        values = parse_qs(urlsplit(url).query).get(LINK_PARAMETER)
        if not values:
            return None
        try:
            return self.read(values[0])
        except InvalidLink:
            return None
