"""Accounts: the grant's row, its lookups by subject and by email, and its leases.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import AmbiguousAccount
from token_broker.store.models import (
    Account,
    UTCDateTime,
    normalize_email,
)

# An `ambiguous_account` problem lists at most this many subjects.
MAX_SUBJECTS_LISTED = 20

# The database's clock (transaction time on Postgres): leases shared by replicas are
# compared against this one clock, never against each replica's own.
DATABASE_NOW = sa.type_coerce(sa.func.now(), UTCDateTime())


def _holds_verified(provider: str, email: str) -> sa.ColumnElement[bool]:
    """Accounts of `provider` whose verified address is `email`: ix_accounts_verified_email's
    whole key and its own predicate (`IS TRUE` says the same, but neither planner proves
    that it implies the index's WHERE, and without it they scan the provider's accounts)."""
    return sa.and_(
        col(Account.provider) == provider,
        col(Account.email) == normalize_email(email),
        col(Account.email_verified),
    )


class AccountRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, account_id: str, *, for_update: bool = False) -> Account | None:
        statement = select(Account).where(Account.id == account_id)
        if for_update:
            # Postgres row lock; SQLite ignores FOR UPDATE (one writer at a time anyway).
            statement = statement.with_for_update()
        result = await self.session.exec(statement.execution_options(populate_existing=True))
        return result.first()

    async def with_clock(
        self, account_id: str, *, lock: bool = False
    ) -> tuple[Account, datetime] | None:
        """The account and the database's clock; with `lock`, the row locked for update.

        A wait for another holder of the lock is bounded by the connection's lock timeout
        (TOKEN_BROKER_LOCK_TIMEOUT_SECONDS, `store/database.py`): past it callers see a
        database outage to retry (503), never a hang. SQLite ignores FOR UPDATE (one
        writer at a time anyway).
        """
        statement = select(Account, DATABASE_NOW).where(Account.id == account_id)
        if lock:
            statement = statement.with_for_update()
        result = await self.session.exec(statement.execution_options(populate_existing=True))
        row = result.first()
        return None if row is None else (row[0], row[1])

    async def set_lease(self, account: Account, lease_id: str, until: datetime) -> None:
        """Give `account` (read by this session) a refresh lease: one UPDATE, no flush."""
        self.session.expunge(account)
        account.refresh_lease_id, account.refresh_lease_until = lease_id, until
        connection = await self.session.connection()
        await connection.execute(
            sa.update(Account)
            .where(col(Account.id) == account.id)
            .values(refresh_lease_id=lease_id, refresh_lease_until=until)
        )

    async def by_subject(self, provider: str, subject: str) -> Account | None:
        result = await self.session.exec(
            select(Account).where(Account.provider == provider, Account.subject == subject)
        )
        return result.first()

    async def with_verified_email(
        self, provider: str, email: str, *, limit: int = MAX_SUBJECTS_LISTED
    ) -> Sequence[Account]:
        """Accounts whose provider verified this address (at most `limit`, by subject).

        Served by ix_accounts_verified_email, so it costs the same at any table size.
        The few rows are ordered here: an ORDER BY subject lets either planner prefer
        walking the (provider, subject) index and filtering every account of the
        provider instead.
        """
        result = await self.session.exec(
            select(Account).where(_holds_verified(provider, email)).limit(limit)
        )
        return sorted(result.all(), key=lambda account: account.subject)

    async def resolve(self, provider: str, reference: str) -> Account | None:
        """An account by its provider subject id or, failing that, its verified email address.

        Email is not a stable key: an unverified address reaches nothing, and an address
        two accounts both verified (it moved between Google accounts) reaches neither,
        raising `AmbiguousAccount` with their subjects. Nothing else (which one was
        refreshed last, letter case) decides which account an email names.
        """
        if "@" not in reference:
            return await self.by_subject(provider, reference)
        # One query for both readings (each served by its index), so a lookup by email
        # costs what a lookup by subject does.
        result = await self.session.exec(
            select(Account)
            .where(
                # The provider inside each branch, so that each is an index's whole key:
                # outside, both planners may walk the provider's accounts instead.
                sa.or_(
                    sa.and_(col(Account.provider) == provider, col(Account.subject) == reference),
                    _holds_verified(provider, reference),
                ),
            )
            .limit(MAX_SUBJECTS_LISTED + 1)
        )
        found = result.all()
        for account in found:
            if account.subject == reference:
                return account
        holders = sorted(found, key=lambda account: account.subject)[:MAX_SUBJECTS_LISTED]
        if len(holders) > 1:
            raise AmbiguousAccount(subjects=[holder.subject for holder in holders])
        return holders[0] if holders else None

    async def page(
        self,
        *,
        email: str | None,
        status: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
        reason: str | None = None,
    ) -> Sequence[Account]:
        statement = select(Account)
        if email is not None:
            statement = statement.where(Account.email == normalize_email(email))
        if status is not None:
            statement = statement.where(Account.status == status)
        if reason is not None:
            statement = statement.where(Account.status_reason == reason)
        if after is not None:
            # A row comparison, which both databases answer from the (created_at, id)
            # index: every page costs the same, however deep into the walk.
            statement = statement.where(
                sa.tuple_(col(Account.created_at), col(Account.id)) > sa.tuple_(*after)
            )
        statement = statement.order_by(col(Account.created_at), col(Account.id)).limit(limit)
        return (await self.session.exec(statement)).all()

    async def save(self, account: Account) -> None:
        self.session.add(account)
        await self.session.flush()

    async def stale_ids(self, cutoff: datetime, limit: int) -> list[str]:
        """Active accounts whose refresh token has not been used since `cutoff`, oldest first."""
        last_used = sa.func.coalesce(col(Account.last_refreshed_at), col(Account.created_at))
        result = await self.session.exec(
            select(Account.id)
            .where(Account.status == "active", last_used < cutoff)
            .order_by(last_used)
            .limit(limit)
        )
        return list(result.all())

    async def count_by_status(self) -> dict[str, int]:
        result = await self.session.exec(
            select(Account.status, sa.func.count()).group_by(Account.status)
        )
        return {status: int(count) for status, count in result.all()}

    async def count_by_status_and_reason(self) -> dict[tuple[str, str | None], int]:
        result = await self.session.exec(
            select(Account.status, Account.status_reason, sa.func.count()).group_by(
                col(Account.status), col(Account.status_reason)
            )
        )
        return {(status, reason): int(count) for status, reason, count in result.all()}

    async def needing_attention(
        self, *, status: str | None, reason: str | None, limit: int
    ) -> Sequence[Account]:
        """Revoked and suspended accounts first (latest change first), then active ones with
        a reason (asked to sign in), then by the grant's end, soonest first."""
        rank = sa.case(
            (col(Account.status) != "active", 0),
            (col(Account.status_reason).is_not(None), 1),
            else_=2,
        )
        statement = select(Account)
        if status is not None:
            statement = statement.where(Account.status == status)
        if reason is not None:
            statement = statement.where(Account.status_reason == reason)
        ending = sa.case((rank == 2, col(Account.grant_expires_at)))
        statement = statement.order_by(
            rank,
            ending.is_(None),
            ending,
            col(Account.status_changed_at).desc(),
            col(Account.created_at),
        ).limit(limit)
        return (await self.session.exec(statement)).all()

    async def expiring(self, before: datetime, limit: int) -> Sequence[Account]:
        """Active accounts whose grant ends before `before` and whose users were not yet told."""
        result = await self.session.exec(
            select(Account)
            .where(
                Account.status == "active",
                col(Account.grant_expires_at) < before,
                col(Account.expiring_notified_at).is_(None),
            )
            .order_by(col(Account.grant_expires_at))
            .limit(limit)
        )
        return result.all()

    async def count_expiring(self, before: datetime) -> int:
        result = await self.session.exec(
            select(sa.func.count()).where(
                Account.status == "active", col(Account.grant_expires_at) < before
            )
        )
        return int(result.one())

    async def claim_expiry_notice(self, account_id: str, now: datetime) -> bool:
        """Mark the account's expiry noticed; False if someone else already had (one UPDATE,
        so two replicas racing cannot both send the notice)."""
        connection = await self.session.connection()
        result = await connection.execute(
            sa.update(Account)
            .where(col(Account.id) == account_id, col(Account.expiring_notified_at).is_(None))
            .values(expiring_notified_at=now)
        )
        return bool(result.rowcount)

    async def by_refresh_token_identifier(
        self, *, sha512x2: str | None = None, prefix_sha256: str | None = None
    ) -> Sequence[Account]:
        """Accounts holding the refresh token Google names by either of its identifiers."""
        statement = select(Account)
        if sha512x2 is not None:
            statement = statement.where(Account.refresh_token_sha512x2 == sha512x2)
        elif prefix_sha256 is not None:
            statement = statement.where(Account.refresh_token_prefix_sha256 == prefix_sha256)
        else:
            return []
        return (await self.session.exec(statement.limit(MAX_SUBJECTS_LISTED))).all()

    async def count_newer_refresh_token(self, provider: str, subject: str) -> None:
        """Google issued a refresh token for this subject that the broker did not keep."""
        connection = await self.session.connection()
        await connection.execute(
            sa.update(Account)
            .where(col(Account.provider) == provider, col(Account.subject) == subject)
            .values(newer_refresh_tokens=col(Account.newer_refresh_tokens) + 1)
        )

    async def sealed_after(
        self, account_id: str, limit: int
    ) -> Sequence[sa.Row[str, str | None, str | None]]:
        """The next `limit` accounts' (id, refresh_token, access_token) by id, locked for
        update (key rotation)."""
        connection = await self.session.connection()
        result = await connection.execute(
            sa.select(col(Account.id), col(Account.refresh_token), col(Account.access_token))
            .where(col(Account.id) > account_id)
            .order_by(col(Account.id))
            .limit(limit)
            .with_for_update()
        )
        return result.all()

    async def store_sealed(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write re-sealed secrets, `{"row", "sealed_refresh", "sealed_access"}` each, in
        one statement executed for all of them."""
        if rows:
            connection = await self.session.connection()
            await connection.execute(
                sa.update(Account)
                .where(col(Account.id) == sa.bindparam("row"))
                .values(
                    refresh_token=sa.bindparam("sealed_refresh"),
                    access_token=sa.bindparam("sealed_access"),
                ),
                list(rows),
            )

    async def delete(self, account: Account) -> None:
        await self.session.delete(account)
        await self.session.flush()

    async def first_by_id(self, limit: int) -> Sequence[Account]:
        """The first accounts by id: a cheap sample (the primary key), and the rows a key
        rotation re-seals first."""
        result = await self.session.exec(select(Account).order_by(col(Account.id)).limit(limit))
        return result.all()
