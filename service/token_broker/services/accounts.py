"""Connected accounts: read by subject or email, list in pages, delete (revoking upstream).

A page's `next_cursor` is opaque and signed (`kit/signed_tokens.py`): it names where
the walk stopped and the filters it walked with, and any cursor the broker did not
issue, or issued for other filters, is 400 `invalid_cursor` before any query runs.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from token_broker.errors import AccountNotFound, InvalidCursor
from token_broker.google.oauth import OAuthClient
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.retry import TransientError
from token_broker.kit.signed_tokens import BadSignedToken, TokenSigner
from token_broker.services.account_states import PROVIDER, AccountStates
from token_broker.services.mailbox_watches import WatchKeeper
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.models import Account, AccountStatus
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.accounts")


CURSOR_PURPOSE = "accounts"


@dataclass(frozen=True)
class AccountCursor:
    """Where a walk of the accounts stopped, and the filters it walked with."""

    signer: TokenSigner

    def encode(self, account: Account, *, email: str | None, status: str | None) -> str:
        claims = {"at": account.created_at.isoformat(), "id": account.id, "f": [email, status]}
        return self.signer.sign(CURSOR_PURPOSE, claims)

    def decode(self, cursor: str, *, email: str | None, status: str | None) -> tuple[datetime, str]:
        try:
            claims = self.signer.verify(CURSOR_PURPOSE, cursor)
            if claims.get("f") != [email, status]:
                raise InvalidCursor("cursor belongs to a listing with other filters; start again.")
            created_at = datetime.fromisoformat(claims["at"])
            account_id = str(uuid.UUID(claims["id"]))
        except (BadSignedToken, KeyError, ValueError, TypeError):
            raise InvalidCursor() from None
        if created_at.tzinfo is None:
            raise InvalidCursor()
        return created_at, account_id


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
        watches: WatchKeeper | None = None,
        cursors: TokenSigner,
    ) -> None:
        self.database = database
        self.cursors = AccountCursor(cursors)
        self.account_states = account_states
        self.oauth = oauth
        self.changes = changes
        self.watches = watches

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
        after = self.cursors.decode(cursor, email=email, status=status) if cursor else None
        async with self.database.transaction() as session:
            rows = list(
                await AccountRepository(session).page(
                    email=email, status=status, after=after, limit=limit + 1, reason=reason
                )
            )
        if len(rows) > limit:
            return rows[:limit], self.cursors.encode(rows[limit - 1], email=email, status=status)
        return rows, None

    async def delete(self, reference: str, *, client_id: str | None) -> Deletion:
        """Stop its Gmail watch and revoke the grant upstream (each best effort), then delete
        the account and its secrets."""
        account = await self.get(reference)
        if self.watches is not None and account.status == AccountStatus.ACTIVE:
            await self.watches.stop_watch(account.subject)
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
