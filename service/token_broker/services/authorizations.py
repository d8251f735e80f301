"""Starting an authorization: a one-time state bound to its PKCE verifier, and the URL to send
the user to; and consuming that state when the provider sends the user back.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import SecretStr

from token_broker.errors import ReturnToNotAllowed, ScopeNotAllowed
from token_broker.google.oauth import OAuthClient, PkcePair
from token_broker.kit.clock import utcnow
from token_broker.scopes import google_name, google_names
from token_broker.scopes import missing as missing_scopes
from token_broker.services.audit import Action, write_audit
from token_broker.services.return_to import return_to_allowed
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.models import OAuthState
from token_broker.store.repositories import OAuthStateRepository
from token_broker.store.sealing import Keyring

MAX_STATE_LENGTH = 512


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


@dataclass(frozen=True)
class StartedAuthorization:
    authorization_url: str
    state: str
    expires_at: datetime


@dataclass(frozen=True)
class ConsumedState:
    """What the authorization's start recorded, read back once at its callback."""

    row: OAuthState
    code_verifier: SecretStr


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
        client_id: str | None,
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
            client_id=client_id,
            created_at=now,
            expires_at=expires_at,
        )
        async with self.database.transaction() as session:
            states = OAuthStateRepository(session)
            await states.purge_expired(now - timedelta(days=1))
            await states.add(row)
            await write_audit(
                session, Action.AUTHORIZATION_STARTED, "ok", client_id=client_id,
                detail={"scopes": requested, "return_to": return_to is not None},
            )  # fmt: skip
        url = self.oauth.authorization_url(
            state=state,
            code_challenge=pkce.challenge,
            scopes=requested,
            login_hint=login_hint,
            redirect_uri=self.redirect_uri,
        )
        return StartedAuthorization(url, state, expires_at)

    async def consume(self, state: str) -> ConsumedState | None:
        """The live state's record, marked used; None if unknown, used or expired."""
        if not state or len(state) > MAX_STATE_LENGTH:
            return None
        async with self.database.transaction() as session:
            row = await OAuthStateRepository(session).consume(hash_state(state), utcnow())
        if row is None:
            return None
        verifier = self.keyring.open(
            row.code_verifier, column=OAuthState.CODE_VERIFIER, row=row.state_hash
        )
        return ConsumedState(row, verifier)

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
