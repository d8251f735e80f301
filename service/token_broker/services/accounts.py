"""Connected accounts: read by subject or email, list in pages, delete (revoking upstream)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from token_broker.errors import AccountNotFound, InvalidCursor
from token_broker.google.oauth import OAuthClient
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.retry import TransientError
from token_broker.services.account_states import PROVIDER, AccountStates
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.models import Account
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.accounts")


def encode_cursor(account: Account) -> str:
    raw = json.dumps([account.created_at.isoformat(), account.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, account_id = json.loads(base64.urlsafe_b64decode(padded))
        uuid.UUID(account_id)
        return datetime.fromisoformat(created_at), str(account_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, AttributeError):
        raise InvalidCursor() from None


@dataclass(frozen=True)
class Deletion:
    account_id: str
    upstream_revoked: bool


class AccountService:
    def __init__(
        self,
        database: Database,
        *,
        account_states: AccountStates,
        oauth: OAuthClient,
        changes: ChangeFeed,
    ) -> None:
        self.database = database
        self.account_states = account_states
        self.oauth = oauth
        self.changes = changes

    async def get(self, reference: str) -> Account:
        async with self.database.transaction() as session:
            account = await AccountRepository(session).resolve(PROVIDER, reference)
        if account is None:
            raise AccountNotFound()
        return account

    async def page(
        self,
        *,
        email: str | None,
        status: str | None,
        cursor: str | None,
        limit: int,
        reason: str | None = None,
    ) -> tuple[list[Account], str | None]:
        after = decode_cursor(cursor) if cursor else None
        async with self.database.transaction() as session:
            rows = list(
                await AccountRepository(session).page(
                    email=email, status=status, after=after, limit=limit + 1, reason=reason
                )
            )
        if len(rows) > limit:
            return rows[:limit], encode_cursor(rows[limit - 1])
        return rows, None

    async def delete(self, reference: str, *, client_id: str | None) -> Deletion:
        """Revoke the grant upstream (best effort), then delete the account and its secrets."""
        account = await self.get(reference)
        upstream_revoked = False
        token = self.account_states.refresh_token(account)
        if token is not None:
            try:
                upstream_revoked = await self.oauth.revoke(token)
            except (TransientError, UpstreamProtocolError) as error:
                log.warning("upstream revoke failed (%s); deleting anyway", error)
        async with self.database.transaction() as session:
            accounts = AccountRepository(session)
            current = await accounts.get(account.id, for_update=True)
            if current is None:
                raise AccountNotFound()
            await self.account_states.delete(
                session, current, client_id=client_id, upstream_revoked=upstream_revoked
            )
        self.changes.changed("account", account.id)
        return Deletion(account.id, upstream_revoked)

    async def count_by_status(self) -> dict[str, int]:
        async with self.database.transaction() as session:
            return await AccountRepository(session).count_by_status()
