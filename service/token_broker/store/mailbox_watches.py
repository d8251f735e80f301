"""SQL for Gmail watches and push receipts. Inside the caller's transaction; never commits.

Work that any replica may pick up (a closed coalescing window, a renewal due, a quiet
mailbox to check) is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` on Postgres, so
two replicas never take the same row; SQLite serves one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from token_broker.store.database import is_postgres
from token_broker.store.models import Account, GmailPushReceipt, MailboxWatch, WatchStatus


class MailboxWatchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _claiming(self, statement: SelectOfScalar[MailboxWatch]) -> list[MailboxWatch]:
        connection = await self.session.connection()
        if is_postgres(connection.dialect):
            statement = statement.with_for_update(skip_locked=True)
        result = await self.session.exec(statement.execution_options(populate_existing=True))
        return list(result.all())

    async def get(self, account_id: str, *, for_update: bool = False) -> MailboxWatch | None:
        statement = select(MailboxWatch).where(MailboxWatch.account_id == account_id)
        if for_update:
            statement = statement.with_for_update()
        result = await self.session.exec(statement.execution_options(populate_existing=True))
        return result.first()

    async def save(self, watch: MailboxWatch) -> None:
        self.session.add(watch)
        await self.session.flush()

    async def delete(self, account_id: str) -> None:
        connection = await self.session.connection()
        await connection.execute(
            sa.delete(MailboxWatch).where(col(MailboxWatch.account_id) == account_id)
        )

    async def add_missing(self, now: datetime, limit: int, account_id: str | None = None) -> int:
        """A pending watch for active accounts without one (or just `account_id`)."""
        connection = await self.session.connection()
        insert = postgres_insert if is_postgres(connection.dialect) else sqlite_insert
        watched = sa.select(col(MailboxWatch.account_id)).where(
            col(MailboxWatch.account_id) == col(Account.id)
        )
        accounts = sa.select(
            col(Account.id), sa.literal(WatchStatus.PENDING.value), sa.literal(now),
            sa.literal(now), sa.literal(0), sa.literal(now), sa.literal(now),
        ).where(col(Account.status) == "active", ~watched.exists())  # fmt: skip
        if account_id is not None:
            accounts = accounts.where(col(Account.id) == account_id)
        columns = [
            "account_id", "status", "renew_at", "heard_at", "failures", "created_at", "updated_at",
        ]  # fmt: skip
        statement = (
            insert(MailboxWatch)
            .from_select(columns, accounts.limit(limit))
            .on_conflict_do_nothing(index_elements=["account_id"])
        )
        return int((await connection.execute(statement)).rowcount or 0)

    async def reopen(self, now: datetime, account_id: str | None = None) -> int:
        """Stopped watches of accounts active again (reconnected): to be made afresh."""
        active = sa.select(col(Account.id)).where(col(Account.status) == "active")
        statement = (
            sa.update(MailboxWatch)
            .where(col(MailboxWatch.status) == WatchStatus.STOPPED)
            .where(col(MailboxWatch.account_id).in_(active))
            .values(
                status=WatchStatus.PENDING, renew_at=now, heard_at=now, history_id=None,
                failures=0, last_error=None, updated_at=now,
            )
        )  # fmt: skip
        if account_id is not None:
            statement = statement.where(col(MailboxWatch.account_id) == account_id)
        connection = await self.session.connection()
        return int((await connection.execute(statement)).rowcount or 0)

    async def stop(self, account_id: str, now: datetime) -> None:
        connection = await self.session.connection()
        await connection.execute(
            sa.update(MailboxWatch)
            .where(col(MailboxWatch.account_id) == account_id)
            .values(
                status=WatchStatus.STOPPED, pending_history_id=None, pending_trigger=None,
                window_ends_at=None, updated_at=now,
            )
        )  # fmt: skip

    async def claim(
        self, account_ids: list[str], now: datetime, *, due_only: bool
    ) -> list[MailboxWatch]:
        """These accounts' watches (due ones only, or all), unless stopped; locked."""
        statement = select(MailboxWatch).where(
            col(MailboxWatch.account_id).in_(account_ids),
            MailboxWatch.status != WatchStatus.STOPPED,
        )
        if due_only:
            statement = statement.where(col(MailboxWatch.renew_at) <= now)
        return await self._claiming(statement)

    async def renewals_due(self, now: datetime, limit: int) -> list[MailboxWatch]:
        """Watches to (re)establish now, the most overdue first; locked for the caller."""
        return await self._claiming(
            select(MailboxWatch)
            .where(MailboxWatch.status != WatchStatus.STOPPED, col(MailboxWatch.renew_at) <= now)
            .order_by(col(MailboxWatch.renew_at))
            .limit(limit)
        )

    async def quiet(self, heard_before: datetime, limit: int) -> list[MailboxWatch]:
        """Active watches nothing was heard from since `heard_before`, with no open window."""
        return await self._claiming(
            select(MailboxWatch)
            .where(
                MailboxWatch.status == WatchStatus.ACTIVE,
                col(MailboxWatch.heard_at) <= heard_before,
                col(MailboxWatch.window_ends_at).is_(None),
            )
            .order_by(col(MailboxWatch.heard_at))
            .limit(limit)
        )

    async def closed_windows(self, now: datetime, limit: int) -> list[MailboxWatch]:
        """Watches whose coalescing window has closed: a webhook is due for each."""
        return await self._claiming(
            select(MailboxWatch)
            .where(col(MailboxWatch.window_ends_at) <= now)
            .order_by(col(MailboxWatch.window_ends_at))
            .limit(limit)
        )

    async def next_window_end(self) -> datetime | None:
        result = await self.session.exec(select(sa.func.min(MailboxWatch.window_ends_at)))
        return result.first()

    async def listing(self) -> Sequence[tuple[MailboxWatch, str | None]]:
        """Every watch with its account's email, soonest renewal first (operators)."""
        result = await self.session.exec(
            select(MailboxWatch, Account.email)
            .join(Account, col(Account.id) == col(MailboxWatch.account_id), isouter=True)
            .order_by(col(MailboxWatch.renew_at))
        )
        return result.all()

    async def counts(self, expiring_before: datetime) -> dict[str, int]:
        """Watches by status, and active ones Gmail ends before `expiring_before`."""
        result = await self.session.exec(
            select(MailboxWatch.status, sa.func.count()).group_by(MailboxWatch.status)
        )
        counts = {status: int(count) for status, count in result.all()}
        expiring = await self.session.exec(
            select(sa.func.count()).where(
                MailboxWatch.status == WatchStatus.ACTIVE,
                col(MailboxWatch.expires_at) < expiring_before,
            )
        )
        counts["expiring"] = int(expiring.one())
        return counts


class PushReceiptRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, message_id: str, token_hash: str, at: datetime) -> str | None:
        """Record a push; None if it is new, else the token hash it first came with."""
        connection = await self.session.connection()
        insert = postgres_insert if is_postgres(connection.dialect) else sqlite_insert
        statement = (
            insert(GmailPushReceipt)
            .values(message_id=message_id, token_hash=token_hash, received_at=at)
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
        if (await connection.execute(statement)).rowcount:
            return None
        first = await connection.execute(
            sa.select(col(GmailPushReceipt.token_hash)).where(
                col(GmailPushReceipt.message_id) == message_id
            )
        )
        return str(first.scalar_one())

    async def purge(self, before: datetime) -> int:
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(GmailPushReceipt).where(col(GmailPushReceipt.received_at) < before)
        )
        return int(result.rowcount or 0)
