"""The connect flow's second half: the callback or a code exchange, identity, storing the grant.

The reference flow's rules: a returned refresh token is stored encrypted, upserting
the account by (provider, subject); no refresh token returned means keep the stored
one, or `no_refresh_token` when there is none; the subject comes from a validated ID
token or from userinfo; a required scope the user did not grant stores nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError

from token_broker.errors import (
    AccessDenied,
    BrokerError,
    CodeExchangeFailed,
    InvalidState,
    NoRefreshToken,
    NoUserId,
    ScopeNotGranted,
)
from token_broker.google.failures import UPSTREAM_FAILURES, problem_for
from token_broker.google.oauth import OAuthClient, TokenGrant
from token_broker.services.account_states import AccountStates, NoStoredRefreshToken
from token_broker.services.audit import Action, write_audit
from token_broker.services.authorizations import AuthorizationService
from token_broker.services.reauthorization import ReauthorizationLinks
from token_broker.services.return_to import append_query
from token_broker.services.webhooks import Webhooks
from token_broker.settings import Settings
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.models import Account, OAuthState

log = logging.getLogger("token_broker.connect")


@dataclass(frozen=True)
class CallbackOutcome:
    """Where the browser goes after the callback, or what page it sees."""

    return_to: str | None
    account: Account | None = None
    error: BrokerError | None = None

    def redirect_url(self) -> str | None:
        if self.return_to is None:
            return None
        if self.account is not None:
            extra = {"account": self.account.subject, "status": "connected"}
        else:
            assert self.error is not None
            extra = {"error": self.error.code}
        return append_query(self.return_to, extra)


class ConnectService:
    def __init__(
        self,
        *,
        database: Database,
        authorizations: AuthorizationService,
        links: ReauthorizationLinks,
        account_states: AccountStates,
        oauth: OAuthClient,
        settings: Settings,
        changes: ChangeFeed,
        webhooks: Webhooks,
    ) -> None:
        self.database = database
        self.authorizations = authorizations
        self.links = links
        self.account_states = account_states
        self.oauth = oauth
        self.settings = settings
        self.changes = changes
        self.webhooks = webhooks

    # ------------------------------------------------------------------ callback

    async def callback(self, params: dict[str, str]) -> CallbackOutcome:
        consumed = await self.authorizations.consume(params.get("state", ""))
        if consumed is None:
            return CallbackOutcome(return_to=None, error=InvalidState())
        started = consumed.row
        try:
            if "error" in params:
                if params["error"] == "access_denied":
                    raise AccessDenied(authorization_url=await self._try_again_url(started))
                raise CodeExchangeFailed(
                    "The provider answered the authorization with an error.",
                    authorization_url=await self.links.url(started.login_hint),
                )
            code = params.get("code")
            if not code:
                raise CodeExchangeFailed(
                    "The callback carried neither a code nor an error.",
                    authorization_url=await self.links.url(started.login_hint),
                )
            account = await self._complete(
                SecretStr(code),
                redirect_uri=self.authorizations.redirect_uri,
                code_verifier=consumed.code_verifier,
                client_id=started.client_id,
                login_hint=started.login_hint,
            )
        except BrokerError as error:
            await self._record_failure(error, started.client_id)
            return CallbackOutcome(return_to=started.return_to, error=error)
        return CallbackOutcome(return_to=started.return_to, account=account)

    async def _try_again_url(self, started: OAuthState) -> str | None:
        """For the page a person sees after pressing Cancel: the same authorization, anew.

        With a `return_to` the browser goes back to the calling app, which decides.
        """
        if started.return_to is not None:
            return None
        again = await self.authorizations.start(
            client_id=started.client_id,
            login_hint=started.login_hint,
            scopes=started.scopes.split(),
            return_to=None,
        )
        return again.authorization_url

    # ------------------------------------------------------------------ exchange

    async def exchange(
        self, *, client_id: str, code: str, redirect_uri: str | None, code_verifier: str | None
    ) -> Account:
        try:
            return await self._complete(
                SecretStr(code),
                redirect_uri=redirect_uri or self.settings.exchange_redirect_uri,
                code_verifier=SecretStr(code_verifier) if code_verifier else None,
                client_id=client_id,
                login_hint=None,
            )
        except BrokerError as error:
            await self._record_failure(error, client_id)
            raise

    # ------------------------------------------------------------------ shared

    async def _complete(
        self,
        code: SecretStr,
        *,
        redirect_uri: str,
        code_verifier: SecretStr | None,
        client_id: str | None,
        login_hint: str | None,
    ) -> Account:
        grant = await self._exchange_code(code, redirect_uri, code_verifier, login_hint)
        subject, email = await self._identify(grant)
        granted = set(grant.scopes) if grant.scopes is not None else set(self.settings.scopes)
        missing = [scope for scope in self.settings.required_scopes if scope not in granted]
        if missing:
            raise ScopeNotGranted(
                f"The user did not grant {' '.join(missing)}; nothing was stored.",
                missing_scopes=missing,
                authorization_url=await self.links.url(email or login_hint),
            )
        account = await self._store(grant, subject, email, client_id)
        self.links.forget(email)
        self.links.forget(login_hint)
        self.changes.changed("account", account.id)
        return account

    async def _exchange_code(
        self,
        code: SecretStr,
        redirect_uri: str,
        code_verifier: SecretStr | None,
        login_hint: str | None,
    ) -> TokenGrant:
        try:
            return await self.oauth.exchange_code(
                code, redirect_uri=redirect_uri, code_verifier=code_verifier
            )
        except UPSTREAM_FAILURES as error:
            problem = problem_for(error, "code_exchange")
            if isinstance(problem, CodeExchangeFailed):
                problem.authorization_url = await self.links.url(login_hint)
            raise problem from None

    async def _identify(self, grant: TokenGrant) -> tuple[str, str | None]:
        claims: dict[str, Any]
        try:
            if grant.id_token is not None:
                claims = await self.oauth.verify_id_token(grant.id_token)
            else:
                claims = await self.oauth.userinfo(grant.access_token)
        except UPSTREAM_FAILURES as error:
            raise problem_for(error, "identity") from None
        subject = claims.get("sub") or claims.get("id")
        if not isinstance(subject, str | int) or not str(subject).strip():
            raise NoUserId()
        subject = str(subject)
        if len(subject) > 255:
            raise NoUserId("The provider's subject id is longer than 255 characters.")
        email = claims.get("email")
        return subject, email if isinstance(email, str) and "@" in email else None

    async def _store(
        self, grant: TokenGrant, subject: str, email: str | None, client_id: str | None
    ) -> Account:
        scopes = grant.scopes or self.settings.scopes
        # A concurrent first connect of the same subject loses the insert race once;
        # the retry finds the row and updates it.
        for attempt in range(2):
            try:
                async with self.database.transaction() as session:
                    stored = await self.account_states.store_grant(
                        session,
                        subject=subject,
                        email=email,
                        grant=grant,
                        scopes=tuple(scopes),
                        client_id=client_id,
                    )
            except NoStoredRefreshToken:
                raise NoRefreshToken(authorization_url=await self.links.url(email)) from None
            except IntegrityError:
                if attempt == 1:
                    raise
                continue
            if stored.reactivated:
                self.webhooks.wake()
            return stored.account
        raise AssertionError("unreachable")

    async def _record_failure(self, error: BrokerError, client_id: str | None) -> None:
        try:
            async with self.database.transaction() as session:
                await write_audit(
                    session, Action.ACCOUNT_CONNECTED, error.code, client_id=client_id
                )
        except Exception:
            log.warning("could not record a failed connect in the audit log", exc_info=True)
