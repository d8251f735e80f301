"""The connect flow's second half: the callback or a code exchange, identity, storing the grant.

The reference flow's rules: a returned refresh token is stored encrypted, upserting
the account by (provider, subject); no refresh token returned means keep the stored
one, or `no_refresh_token` when there is none; the subject comes from a validated ID
token or from userinfo; a required scope the user did not grant stores nothing.

And the rules that make the result trustworthy:

- a callback whose `iss` (RFC 9207) names another issuer is refused before any
  exchange (`issuer_mismatch`), and the ID token must carry the flow's nonce;
- a flow started from a re-authorization link stores nothing unless the user consented
  as that link's account (`account_mismatch`);
- each flow's outcome is recorded on its authorization, and the browser goes back to
  `return_to` with only the authorization id and a status: the calling app confirms
  the result with `GET /v1/authorizations/{id}`, never by trusting the redirect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError

from token_broker.errors import (
    AccessDenied,
    AccountMismatch,
    BrokerError,
    CodeExchangeFailed,
    InvalidState,
    IssuerMismatch,
    NoRefreshToken,
    NoUserId,
    ScopeNotGranted,
)
from token_broker.google.failures import UPSTREAM_FAILURES, problem_for
from token_broker.google.oauth import OAuthClient, TokenGrant
from token_broker.scopes import google_names
from token_broker.scopes import missing as missing_scopes
from token_broker.services.account_states import AccountStates, Identity, NoStoredRefreshToken
from token_broker.services.audit import Action, write_audit
from token_broker.services.authorizations import (
    AuthorizationService,
    ConsumedState,
    ReconnectTarget,
    record_outcome,
)
from token_broker.services.reauthorization import ReauthorizationLinks
from token_broker.services.return_to import append_query
from token_broker.services.webhooks import Webhooks
from token_broker.settings import Settings
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.models import Account, normalize_email

log = logging.getLogger("token_broker.connect")

MAX_EMAIL_LENGTH = 320


@dataclass(frozen=True)
class CallbackOutcome:
    """Where the browser goes after the callback, or what page it sees."""

    return_to: str | None
    authorization_id: str | None = None
    account: Account | None = None
    error: BrokerError | None = None

    def redirect_url(self) -> str | None:
        """`return_to` with the authorization id and status: never an account id to trust."""
        if self.return_to is None or self.authorization_id is None:
            return None
        extra = {"authorization": self.authorization_id}
        if self.account is not None:
            extra["status"] = "connected"
        else:
            assert self.error is not None
            extra |= {"status": "failed", "error": self.error.code}
        return append_query(self.return_to, extra)


@dataclass(frozen=True)
class Flow:
    """Who started a connect and what it is bound to (nothing, for a code exchange)."""

    client_id: str | None
    login_hint: str | None = None
    consumed: ConsumedState | None = None

    @property
    def target(self) -> ReconnectTarget | None:
        return self.consumed.target if self.consumed is not None else None

    @property
    def nonce_sha256(self) -> str | None:
        return self.consumed.row.nonce_hash if self.consumed is not None else None

    @property
    def authorization_id(self) -> str | None:
        return self.consumed.authorization_id if self.consumed is not None else None

    @property
    def required_scopes(self) -> list[str] | None:
        """Scopes this flow must end with (an incremental authorization's); None: the
        broker's required scopes."""
        return self.consumed.required_scopes if self.consumed is not None else None

    @property
    def requested_scopes(self) -> list[str]:
        return self.consumed.requested_scopes if self.consumed is not None else []


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
        flow = Flow(client_id=started.client_id, login_hint=started.login_hint, consumed=consumed)
        try:
            issuer = params.get("iss")
            if issuer is not None and issuer not in self.oauth.issuers:
                # RFC 9207: the answer came from (or was relayed as) another provider's.
                raise IssuerMismatch()
            if "error" in params:
                if params["error"] == "access_denied":
                    # A person who pressed Cancel may change their mind: the page offers the
                    # same flow again (an app with a return_to decides for itself).
                    raise AccessDenied(
                        authorization_url=None if started.return_to else self._link(flow)
                    )
                raise CodeExchangeFailed(
                    "The provider answered the authorization with an error.",
                    authorization_url=self._link(flow),
                )
            code = params.get("code")
            if not code:
                raise CodeExchangeFailed(
                    "The callback carried neither a code nor an error.",
                    authorization_url=self._link(flow),
                )
            account = await self._complete(
                SecretStr(code),
                redirect_uri=self.authorizations.redirect_uri,
                code_verifier=consumed.code_verifier,
                flow=flow,
            )
        except BrokerError as error:
            await self._record_failure(error, flow)
            return CallbackOutcome(started.return_to, consumed.authorization_id, error=error)
        return CallbackOutcome(started.return_to, consumed.authorization_id, account=account)

    async def exchange(
        self, *, client_id: str, code: str, redirect_uri: str | None, code_verifier: str | None
    ) -> Account:
        flow = Flow(client_id=client_id)
        try:
            return await self._complete(
                SecretStr(code),
                redirect_uri=redirect_uri or self.settings.exchange_redirect_uri,
                code_verifier=SecretStr(code_verifier) if code_verifier else None,
                flow=flow,
            )
        except BrokerError as error:
            await self._record_failure(error, flow)
            raise

    # ------------------------------------------------------------------ shared

    async def _complete(
        self,
        code: SecretStr,
        *,
        redirect_uri: str,
        code_verifier: SecretStr | None,
        flow: Flow,
    ) -> Account:
        grant = await self._exchange_code(code, redirect_uri, code_verifier, flow)
        identity = await self._identify(grant, flow.nonce_sha256)
        target = flow.target
        if target is not None and identity.subject != target.subject:
            # A re-authorization completed as someone else: the new grant is dropped (not
            # revoked: revoking would also end that person's own stored grant, if any).
            await self._dropped(grant, identity)
            raise AccountMismatch(authorization_url=self._link(flow))
        granted = grant.scopes if grant.scopes is not None else self.settings.scopes
        required = flow.required_scopes
        missing = missing_scopes(
            self.settings.required_scopes if required is None else required, granted
        )
        if missing:
            await self._dropped(grant, identity)
            raise ScopeNotGranted(
                f"The user did not grant {' '.join(missing)}; nothing was stored.",
                missing_scopes=missing,
                authorization_url=self._link(
                    flow, login_hint=identity.email, scopes=missing if required else ()
                ),
            )
        return await self._store(grant, identity, flow)

    async def _dropped(self, grant: TokenGrant, identity: Identity) -> None:
        """A grant Google issued and the broker does not keep: counted on the account of
        its subject, if stored, since Google keeps only the newest refresh tokens."""
        if grant.refresh_token is None:
            return
        try:
            async with self.database.transaction() as session:
                await self.account_states.grant_dropped(session, identity.subject)
        except Exception:
            log.warning("could not count a dropped grant", exc_info=True)

    def _link(
        self,
        flow: Flow,
        *,
        account_id: str | None = None,
        login_hint: str | None = None,
        scopes: Sequence[str] = (),
    ) -> str:
        """Where to try again: bound to the flow's account (or `account_id`), if any; with
        `scopes`, asking to add them (a failed incremental authorization)."""
        target = flow.target
        return self.links.url(
            account_id=target.account_id if target is not None else account_id,
            login_hint=login_hint or flow.login_hint,
            client_id=flow.client_id,
            scopes=scopes if target is not None else (),
        )

    async def _exchange_code(
        self,
        code: SecretStr,
        redirect_uri: str,
        code_verifier: SecretStr | None,
        flow: Flow,
    ) -> TokenGrant:
        try:
            return await self.oauth.exchange_code(
                code, redirect_uri=redirect_uri, code_verifier=code_verifier
            )
        except UPSTREAM_FAILURES as error:
            problem = problem_for(error, "code_exchange")
            if isinstance(problem, CodeExchangeFailed):
                problem.authorization_url = self._link(flow)
            raise problem from None

    async def _identify(self, grant: TokenGrant, nonce_sha256: str | None) -> Identity:
        claims: dict[str, Any]
        try:
            if grant.id_token is not None:
                claims = await self.oauth.verify_id_token(grant.id_token, nonce_sha256=nonce_sha256)
                verified = claims.get("email_verified")
            else:
                claims = await self.oauth.userinfo(grant.access_token)
                # OpenID Connect userinfo says email_verified; Google's v2 verified_email.
                verified = claims.get("email_verified", claims.get("verified_email"))
        except UPSTREAM_FAILURES as error:
            raise problem_for(error, "identity") from None
        subject = claims.get("sub") or claims.get("id")
        if not isinstance(subject, str | int) or not str(subject).strip():
            raise NoUserId()
        subject = str(subject)
        if len(subject) > 255:
            raise NoUserId("The provider's subject id is longer than 255 characters.")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or len(email) > MAX_EMAIL_LENGTH:
            return Identity(subject, None, email_verified=False)
        # Very old Google tokens say "true" as a string; anything else is not verified.
        return Identity(subject, normalize_email(email), email_verified=verified in (True, "true"))

    async def _store(self, grant: TokenGrant, identity: Identity, flow: Flow) -> Account:
        # Stored, and so shown, in Google's spelling whichever one was configured or answered.
        scopes = google_names(grant.scopes or self.settings.scopes)
        # A concurrent first connect of the same subject loses the insert race once;
        # the retry finds the row and updates it.
        for attempt in range(2):
            try:
                async with self.database.transaction() as session:
                    stored = await self.account_states.store_grant(
                        session,
                        identity=identity,
                        grant=grant,
                        scopes=scopes,
                        client_id=flow.client_id,
                        authorization_id=flow.authorization_id,
                        requested=flow.requested_scopes,
                    )
                    if flow.consumed is not None:
                        await record_outcome(session, flow.consumed, account=stored.account)
            except NoStoredRefreshToken as missing:
                raise NoRefreshToken(
                    authorization_url=self._link(
                        flow, account_id=missing.account_id, login_hint=identity.email
                    )
                ) from None
            except IntegrityError:
                if attempt == 1:
                    raise
                continue
            self.webhooks.wake()
            self.changes.changed("account", stored.account.id)
            # Accounts that share the new verified email no longer own it alone: replicas
            # drop what they cached under it.
            for other in stored.sharing_email:
                self.changes.changed("account", other)
            return stored.account
        raise AssertionError("unreachable")

    async def _record_failure(self, error: BrokerError, flow: Flow) -> None:
        try:
            async with self.database.transaction() as session:
                await write_audit(
                    session, Action.ACCOUNT_CONNECTED, error.code, client_id=flow.client_id,
                    detail={"authorization": flow.authorization_id,
                            "account": flow.target.account_id if flow.target else None},
                )  # fmt: skip
                if flow.consumed is not None:
                    await record_outcome(session, flow.consumed, error=error)
        except Exception:
            log.warning("could not record a failed connect", exc_info=True)
