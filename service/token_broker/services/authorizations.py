"""Authorizations: an id and an outcome per connect flow, and the one-time states that carry a
flow to the provider and back.

Each trip to the provider gets a fresh random state (stored hashed), bound to its PKCE
verifier (sealed), the hash of an OpenID Connect nonce, its authorization's id, and,
for a re-authorization, the account whose subject alone may complete it. A state is
consumed once, at its callback.

An authorization started over the API gets its row at once (pending); one started by
opening a re-authorization link gets its row when it finishes, so a link opened a
thousand times leaves nothing behind once its states expire. Only the API client that
started an authorization can read its outcome.

Incremental authorization (`POST /v1/accounts/{account}/authorizations`, and the upgrade
link of `scope_not_granted`) adds scopes to a connected account: the flow is bound to the
account's subject like a re-authorization, asks for the new scopes with the account's
`login_hint` (and `include_granted_scopes=true`, as every flow does, so Google's answer
holds the union), and must end with them granted.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import SecretStr
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import (
    AccountNotFound,
    AuthorizationNotFound,
    BrokerError,
    ReturnToNotAllowed,
    ScopeNotAllowed,
)
from token_broker.google.oauth import OAuthClient, PkcePair
from token_broker.kit.clock import utcnow
from token_broker.scopes import SIGN_IN_SCOPES, google_name, google_names
from token_broker.scopes import missing as missing_scopes
from token_broker.services.account_states import PROVIDER
from token_broker.services.audit import Action, write_audit
from token_broker.services.return_to import return_to_allowed
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.models import Account, Authorization, AuthorizationStatus, OAuthState
from token_broker.store.repositories import (
    AccountRepository,
    AuthorizationRepository,
    OAuthStateRepository,
)
from token_broker.store.sealing import Keyring

MAX_STATE_LENGTH = 512


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


@dataclass(frozen=True)
class StartedAuthorization:
    id: str
    authorization_url: str
    state: str
    expires_at: datetime


@dataclass(frozen=True)
class ReconnectTarget:
    """The account a re-authorization must end with (its id and provider subject)."""

    account_id: str
    subject: str


@dataclass(frozen=True)
class ConsumedState:
    """What the flow's start recorded, read back once at its callback."""

    row: OAuthState
    code_verifier: SecretStr

    @property
    def authorization_id(self) -> str:
        assert self.row.authorization_id is not None  # see `consume`
        return self.row.authorization_id

    @property
    def target(self) -> ReconnectTarget | None:
        if self.row.account_id is None or self.row.subject is None:
            return None
        return ReconnectTarget(self.row.account_id, self.row.subject)

    @property
    def requested_scopes(self) -> list[str]:
        return self.row.scopes.split()

    @property
    def required_scopes(self) -> list[str] | None:
        """Scopes the flow must end with; None: TOKEN_BROKER_REQUIRED_SCOPES."""
        return self.row.required_scopes.split() if self.row.required_scopes else None


class AuthorizationService:
    def __init__(
        self, *, database: Database, keyring: Keyring, oauth: OAuthClient, settings: Settings
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.oauth = oauth
        self.settings = settings

    @property
    def redirect_uri(self) -> str:
        assert self.settings.redirect_uri is not None
        return self.settings.redirect_uri

    async def start(
        self,
        *,
        client_id: str,
        login_hint: str | None,
        scopes: list[str] | None,
        return_to: str | None,
        account: Account | None = None,
    ) -> StartedAuthorization:
        """An authorization started over the API: pending until its callback.

        With `account`, an incremental authorization adding `scopes` to it.
        """
        if return_to is not None and not return_to_allowed(
            return_to, self.settings.return_to_allowlist
        ):
            raise ReturnToNotAllowed()
        target = None
        required = None
        if account is not None:
            target = ReconnectTarget(account.id, account.subject)
            login_hint = account.email or login_hint
            requested, required = self._adding(scopes or [])
        else:
            requested = self._scopes(scopes)
        now = utcnow()
        state, row, url = self._new_state(
            now,
            authorization_id=str(uuid.uuid4()),
            client_id=client_id,
            login_hint=login_hint,
            scopes=requested,
            return_to=return_to,
            target=target,
            required=required,
        )
        assert row.authorization_id is not None
        async with self.database.transaction() as session:
            authorizations = AuthorizationRepository(session)
            await authorizations.add(
                Authorization(
                    id=row.authorization_id,
                    client_id=client_id,
                    created_at=now,
                    expires_at=row.expires_at,
                )
            )
            await OAuthStateRepository(session).add(row)
            await write_audit(
                session, Action.AUTHORIZATION_STARTED, "ok", client_id=client_id,
                detail={"authorization": row.authorization_id, "scopes": requested,
                        "return_to": return_to is not None,
                        "account": target.account_id if target else None},
            )  # fmt: skip
        return StartedAuthorization(row.authorization_id, url, state, row.expires_at)

    async def add_scopes(
        self, *, client_id: str, reference: str, scopes: list[str], return_to: str | None
    ) -> StartedAuthorization:
        """Incremental authorization for a connected account (by subject or verified email)."""
        async with self.database.transaction() as session:
            account = await AccountRepository(session).resolve(PROVIDER, reference)
        if account is None:
            raise AccountNotFound()
        return await self.start(
            client_id=client_id, login_hint=None, scopes=scopes, return_to=return_to,
            account=account,
        )  # fmt: skip

    async def start_from_link(
        self,
        *,
        client_id: str | None,
        login_hint: str | None,
        target: ReconnectTarget | None,
        adding: Sequence[str] = (),
    ) -> str:
        """A fresh flow for an opened re-authorization link; returns the provider URL.

        Writes only the state (removed once expired): the authorization's row, and its
        audit, are written when the flow finishes. `adding`: scopes the flow adds.
        """
        now = utcnow()
        requested, required = list(self.settings.scopes), None
        if adding and target is not None:
            requested, required = self._adding(adding)
        _, row, url = self._new_state(
            now,
            authorization_id=str(uuid.uuid4()),
            client_id=client_id,
            login_hint=login_hint,
            scopes=requested,
            return_to=None,
            target=target,
            required=required,
        )
        async with self.database.transaction() as session:
            await OAuthStateRepository(session).add(row)
        return url

    def _new_state(
        self,
        now: datetime,
        *,
        authorization_id: str,
        client_id: str | None,
        login_hint: str | None,
        scopes: list[str],
        return_to: str | None,
        target: ReconnectTarget | None,
        required: list[str] | None = None,
    ) -> tuple[str, OAuthState, str]:
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(24)
        pkce = PkcePair.generate()
        state_hash = hash_state(state)
        row = OAuthState(
            state_hash=state_hash,
            code_verifier=self.keyring.seal(
                pkce.verifier, column=OAuthState.CODE_VERIFIER, row=state_hash
            ),
            nonce_hash=hash_state(nonce),
            authorization_id=authorization_id,
            account_id=target.account_id if target else None,
            subject=target.subject if target else None,
            login_hint=login_hint,
            scopes=" ".join(scopes),
            required_scopes=" ".join(required) if required is not None else None,
            return_to=return_to,
            client_id=client_id,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.state_ttl_seconds),
        )
        url = self.oauth.authorization_url(
            state=state,
            code_challenge=pkce.challenge,
            scopes=scopes,
            login_hint=login_hint,
            redirect_uri=self.redirect_uri,
            nonce=nonce,
        )
        return state, row, url

    async def consume(self, state: str) -> ConsumedState | None:
        """The live state's record, marked used; None if unknown, used or expired."""
        if not state or len(state) > MAX_STATE_LENGTH:
            return None
        async with self.database.transaction() as session:
            row = await OAuthStateRepository(session).consume(hash_state(state), utcnow())
        if row is None:
            return None
        if row.authorization_id is None:
            # Started by a replica older than migration 0003 (during a rolling upgrade):
            # the flow gets its id, and its row, when it finishes, like a link's.
            row.authorization_id = str(uuid.uuid4())
        verifier = self.keyring.open(
            row.code_verifier, column=OAuthState.CODE_VERIFIER, row=row.state_hash
        )
        return ConsumedState(row, verifier)

    async def of_client(self, authorization_id: str, client_id: str) -> Authorization:
        """The authorization, if `client_id` started it: anyone else gets the same 404."""
        async with self.database.transaction() as session:
            row = await AuthorizationRepository(session).of_client(authorization_id, client_id)
        if row is None:
            raise AuthorizationNotFound()
        return row

    def _scopes(self, requested: list[str] | None) -> list[str]:
        allowed = self.settings.scopes
        if requested is None:
            return list(allowed)
        unknown = sorted(set(missing_scopes(requested, allowed)))
        if unknown:
            raise ScopeNotAllowed(
                f"not in TOKEN_BROKER_SCOPES: {' '.join(unknown)}", scopes_not_allowed=unknown
            )
        wanted = set(google_names([*requested, *self.settings.required_scopes]))
        return [scope for scope in allowed if google_name(scope) in wanted]

    def _adding(self, adding: Sequence[str]) -> tuple[list[str], list[str]]:
        """An incremental authorization's scopes: those it asks for (the new ones, the
        required ones and sign-in, which the consent screen does not ask again), and those
        it must end with (the new and the required ones)."""
        allowed = self.settings.scopes
        unknown = sorted(set(missing_scopes(adding, allowed)))
        if unknown:
            raise ScopeNotAllowed(
                f"not in TOKEN_BROKER_SCOPES: {' '.join(unknown)}", scopes_not_allowed=unknown
            )
        required = list(google_names([*adding, *self.settings.required_scopes]))
        wanted = {*required, *SIGN_IN_SCOPES}
        return [scope for scope in allowed if google_name(scope) in wanted], required


async def record_outcome(
    session: AsyncSession,
    flow: ConsumedState,
    *,
    account: Account | None = None,
    error: BrokerError | None = None,
) -> None:
    """A finished flow's outcome on its authorization, in the caller's transaction.

    Flows started from a link get their row here, owned by the client whose request
    produced the link.
    """
    repository = AuthorizationRepository(session)
    row = await repository.get(flow.authorization_id)
    if row is None:
        row = Authorization(
            id=flow.authorization_id,
            client_id=flow.row.client_id,
            created_at=flow.row.created_at,
            expires_at=flow.row.expires_at,
        )
    row.completed_at = utcnow()
    if account is not None:
        row.status = AuthorizationStatus.CONNECTED
        row.account_id = account.id
        row.account_subject = account.subject
        row.account_email = account.email
        row.error_code = row.error_detail = None
    else:
        assert error is not None
        row.status = AuthorizationStatus.FAILED
        row.error_code = error.code
        row.error_detail = error.detail
    await repository.save(row)


def outcome_status(row: Authorization, now: datetime) -> str:
    """pending, connected or failed as stored; a pending flow past its state's life: expired."""
    if row.status == AuthorizationStatus.PENDING and row.expires_at <= now:
        return "expired"
    return row.status
