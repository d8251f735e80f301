"""The connect flow: authorization URL, callback, code exchange, identity, storing the grant.

The reference flow's rules: a returned refresh token is stored encrypted, upserting
the account by (provider, subject); no refresh token returned means keep the stored
one, or `no_refresh_token` when there is none; the subject comes from a validated ID
token or from userinfo; a required scope the user did not grant stores nothing.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError

from service.accounts import PROVIDER
from service.audit import Action, audit_event
from service.auth import Caller
from service.crypto import Keyring
from service.db import Database
from service.errors import (
    AccessDenied,
    BrokerError,
    CodeExchangeFailed,
    InvalidState,
    NoRefreshToken,
    NoUserId,
    ProviderRejectedClient,
    ReturnToNotAllowed,
    ScopeNotAllowed,
    ScopeNotGranted,
    UpstreamError,
    UpstreamUnavailable,
)
from service.events import CHANNEL, ChangeFeed, payload
from service.google.oauth import IdTokenInvalid, OAuthClient, OAuthError, PkcePair, TokenGrant
from service.google.transport import UpstreamProtocolError
from service.models import Account, AccountStatus, OAuthState, utcnow
from service.repositories import (
    AccountRepository,
    AuditRepository,
    ChangeNotices,
    OAuthStateRepository,
)
from service.retry import TransientError
from service.settings import Settings
from service.webhooks import Webhooks

log = logging.getLogger("token_broker.connect")


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


@dataclass(frozen=True)
class StartedAuthorization:
    authorization_url: str
    state: str
    expires_at: datetime


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


def append_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def return_to_allowed(return_to: str, allowlist: tuple[str, ...]) -> bool:
    """Same scheme, host and port as an entry, and a path at or under the entry's path.

    Refused outright: control characters and backslashes, credentials in the
    authority, fragments, and dot segments, encoded or not (a browser would resolve
    `/connected/../elsewhere` out of the allowed path).
    """
    if any(ord(c) < 0x21 or c == "\\" for c in return_to):
        return False
    target = urlsplit(return_to)
    if target.scheme not in ("http", "https") or not target.hostname or "@" in target.netloc:
        return False
    if target.fragment:
        return False
    segments = unquote(target.path).split("/")
    if "." in segments or ".." in segments or "\\" in unquote(target.path):
        return False
    for entry in allowlist:
        allowed = urlsplit(entry)
        same_origin = (
            target.scheme == allowed.scheme
            and target.hostname == allowed.hostname
            and target.port == allowed.port
        )
        prefix = allowed.path.rstrip("/")
        if same_origin and (target.path == allowed.path or target.path.startswith(prefix + "/")):
            return True
    return False


class ConnectService:
    def __init__(
        self,
        *,
        database: Database,
        keyring: Keyring,
        oauth: OAuthClient,
        settings: Settings,
        changes: ChangeFeed,
        webhooks: Webhooks,
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.oauth = oauth
        self.settings = settings
        self.changes = changes
        self.webhooks = webhooks
        self._reauthorization_urls: dict[str, tuple[float, str]] = {}

    # ------------------------------------------------------------------ start

    async def start(
        self,
        *,
        caller: Caller | None,
        login_hint: str | None,
        scopes: list[str] | None,
        return_to: str | None,
    ) -> StartedAuthorization:
        if return_to is not None and not return_to_allowed(
            return_to, self.settings.return_to_allowlist
        ):
            raise ReturnToNotAllowed()
        requested = self._scopes(scopes)
        state = secrets.token_urlsafe(32)
        pkce = PkcePair.generate()
        now = utcnow()
        expires_at = now + timedelta(seconds=self.settings.state_ttl_seconds)
        state_hash = hash_state(state)
        row = OAuthState(
            state_hash=state_hash,
            code_verifier=self.keyring.seal(
                pkce.verifier, column=OAuthState.CODE_VERIFIER, row=state_hash
            ),
            login_hint=login_hint,
            scopes=" ".join(requested),
            return_to=return_to,
            client_id=caller.client_id if caller else None,
            created_at=now,
            expires_at=expires_at,
        )
        async with self.database.transaction() as session:
            states = OAuthStateRepository(session)
            await states.purge_expired(now - timedelta(days=1))
            await states.add(row)
            await AuditRepository(session).add_many(
                [
                    audit_event(
                        Action.AUTHORIZATION_STARTED,
                        "ok",
                        client_id=row.client_id,
                        detail={"scopes": requested, "return_to": return_to is not None},
                    )
                ]
            )
        url = self.oauth.authorization_url(
            state=state,
            code_challenge=pkce.challenge,
            scopes=requested,
            login_hint=login_hint,
            redirect_uri=self._redirect_uri,
        )
        return StartedAuthorization(url, state, expires_at)

    async def reauthorization_url(self, login_hint: str | None) -> str:
        """An authorization URL that forces consent, reused for a while per account.

        Errors that tell the caller to send the user back (no refresh token, revoked
        grant) carry one; reusing it keeps a caller that retries from filling the
        state table.
        """
        key = login_hint or ""
        now = time.monotonic()
        cached = self._reauthorization_urls.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        started = await self.start(caller=None, login_hint=login_hint, scopes=None, return_to=None)
        if len(self._reauthorization_urls) > 10_000:
            self._reauthorization_urls.clear()
        self._reauthorization_urls[key] = (
            now + self.settings.state_ttl_seconds / 2,
            started.authorization_url,
        )
        return started.authorization_url

    def forget_reauthorization_url(self, login_hint: str | None) -> None:
        self._reauthorization_urls.pop(login_hint or "", None)

    # ------------------------------------------------------------------ callback

    async def callback(self, params: dict[str, str]) -> CallbackOutcome:
        state_value = params.get("state", "")
        consumed = None
        if state_value and len(state_value) <= 512:
            async with self.database.transaction() as session:
                consumed = await OAuthStateRepository(session).consume(
                    hash_state(state_value), utcnow()
                )
        if consumed is None:
            return CallbackOutcome(return_to=None, error=InvalidState())
        try:
            if "error" in params:
                if params["error"] == "access_denied":
                    raise AccessDenied()
                raise CodeExchangeFailed(
                    "The provider answered the authorization with an error.",
                    authorization_url=await self.reauthorization_url(consumed.login_hint),
                )
            code = params.get("code")
            if not code:
                raise CodeExchangeFailed(
                    "The callback carried neither a code nor an error.",
                    authorization_url=await self.reauthorization_url(consumed.login_hint),
                )
            verifier = self.keyring.open(
                consumed.code_verifier, column=OAuthState.CODE_VERIFIER, row=consumed.state_hash
            )
            account = await self._complete(
                SecretStr(code),
                redirect_uri=self._redirect_uri,
                code_verifier=verifier,
                client_id=consumed.client_id,
                login_hint=consumed.login_hint,
            )
        except BrokerError as error:
            await self._record_failure(error, consumed.client_id)
            return CallbackOutcome(return_to=consumed.return_to, error=error)
        return CallbackOutcome(return_to=consumed.return_to, account=account)

    # ------------------------------------------------------------------ exchange

    async def exchange(
        self, *, caller: Caller, code: str, redirect_uri: str | None, code_verifier: str | None
    ) -> Account:
        try:
            return await self._complete(
                SecretStr(code),
                redirect_uri=redirect_uri or self.settings.exchange_redirect_uri,
                code_verifier=SecretStr(code_verifier) if code_verifier else None,
                client_id=caller.client_id,
                login_hint=None,
            )
        except BrokerError as error:
            await self._record_failure(error, caller.client_id)
            raise

    # ------------------------------------------------------------------ shared

    @property
    def _redirect_uri(self) -> str:
        assert self.settings.redirect_uri is not None
        return self.settings.redirect_uri

    def _scopes(self, requested: list[str] | None) -> list[str]:
        allowed = self.settings.scopes
        if requested is None:
            return list(allowed)
        unknown = sorted(set(requested) - set(allowed))
        if unknown:
            raise ScopeNotAllowed(
                f"not in TOKEN_BROKER_SCOPES: {' '.join(unknown)}", scopes_not_allowed=unknown
            )
        wanted = set(requested) | set(self.settings.required_scopes)
        return [scope for scope in allowed if scope in wanted]

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
                authorization_url=await self.reauthorization_url(email or login_hint),
            )
        account = await self._store(grant, subject, email, client_id)
        self.forget_reauthorization_url(email)
        self.forget_reauthorization_url(login_hint)
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
        except OAuthError as error:
            if error.error == "invalid_client":
                log.error("the provider rejected the broker's client credentials (invalid_client)")
                raise ProviderRejectedClient() from None
            raise CodeExchangeFailed(
                f"The provider answered {error.error}.",
                authorization_url=await self.reauthorization_url(login_hint),
            ) from None
        except TransientError as error:
            raise UpstreamUnavailable(
                "The provider's token endpoint did not answer; try the code again shortly.",
                retry_after=error.suggested_retry_after(),
            ) from None
        except UpstreamProtocolError as error:
            raise UpstreamError(f"The provider's token endpoint misbehaved: {error}") from None

    async def _identify(self, grant: TokenGrant) -> tuple[str, str | None]:
        claims: dict[str, Any]
        try:
            if grant.id_token is not None:
                claims = await self.oauth.verify_id_token(grant.id_token)
            else:
                claims = await self.oauth.userinfo(grant.access_token)
        except IdTokenInvalid as error:
            raise UpstreamError(f"The provider's ID token failed validation ({error}).") from None
        except TransientError as error:
            raise UpstreamUnavailable(
                "The provider did not answer the identity request.",
                retry_after=error.suggested_retry_after(),
            ) from None
        except UpstreamProtocolError as error:
            raise UpstreamError(f"The provider's identity answer was unusable: {error}") from None
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
        # A concurrent first connect of the same subject loses the insert race once;
        # the retry finds the row and updates it.
        for attempt in range(2):
            try:
                return await self._upsert(grant, subject, email, client_id)
            except NoRefreshToken:
                raise NoRefreshToken(
                    authorization_url=await self.reauthorization_url(email)
                ) from None
            except IntegrityError:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _upsert(
        self, grant: TokenGrant, subject: str, email: str | None, client_id: str | None
    ) -> Account:
        now = utcnow()
        async with self.database.transaction() as session:
            accounts = AccountRepository(session)
            account = await accounts.by_subject(PROVIDER, subject)
            if account is not None:
                account = await accounts.get(account.id, for_update=True)
            if account is None:
                account = Account(
                    id=str(uuid.uuid4()), provider=PROVIDER, subject=subject,
                    created_at=now, updated_at=now,
                )  # fmt: skip
            reactivated = account.status == AccountStatus.REVOKED
            if reactivated:
                # A dead grant's refresh token is worthless; only a new one revives it.
                account.refresh_token = None
            if grant.refresh_token is not None:
                account.refresh_token = self.keyring.seal(
                    grant.refresh_token.get_secret_value(),
                    column=Account.REFRESH_TOKEN,
                    row=account.id,
                )
            elif account.refresh_token is None:
                raise NoRefreshToken()
            account.email = email or account.email
            account.scopes = " ".join(sorted(grant.scopes or self.settings.scopes))
            account.status = AccountStatus.ACTIVE
            account.last_refresh_error = None
            account.access_token = self.keyring.seal(
                grant.access_token.get_secret_value(), column=Account.ACCESS_TOKEN, row=account.id
            )
            account.access_token_expires_at = grant.expires_at
            account.last_refreshed_at = now
            account.updated_at = now
            await accounts.save(account)
            await AuditRepository(session).add_many(
                [
                    audit_event(
                        Action.ACCOUNT_CONNECTED,
                        "ok",
                        client_id=client_id,
                        account_id=account.id,
                        detail={"new_refresh_token": grant.refresh_token is not None},
                    )
                ]
            )
            if reactivated:
                await self.webhooks.account_changed(
                    session, "account.reactivated", account, "reconnected"
                )
            await ChangeNotices(session).send(CHANNEL, payload("account", account.id))
        if reactivated:
            self.webhooks.wake()
        return account

    async def _record_failure(self, error: BrokerError, client_id: str | None) -> None:
        try:
            async with self.database.transaction() as session:
                await AuditRepository(session).add_many(
                    [audit_event(Action.ACCOUNT_CONNECTED, error.code, client_id=client_id)]
                )
        except Exception:
            log.warning("could not record a failed connect in the audit log", exc_info=True)
