"""All SQL lives here. Repositories work inside the caller's transaction and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import AmbiguousAccount
from token_broker.store.database import is_postgres
from token_broker.store.models import (
    Account,
    ApiClient,
    AuditEvent,
    Authorization,
    OAuthState,
    Replica,
    RiscEvent,
    UTCDateTime,
    WebhookDelivery,
    normalize_email,
)

# An `ambiguous_account` problem lists at most this many subjects.
MAX_SUBJECTS_LISTED = 20

# The database's clock (transaction time on Postgres): leases shared by replicas are
# compared against this one clock, never against each replica's own.
DATABASE_NOW = sa.type_coerce(sa.func.now(), UTCDateTime())


class ApiClientRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, client: ApiClient) -> None:
        self.session.add(client)
        await self.session.flush()

    async def by_key_hash(self, key_hash: str) -> ApiClient | None:
        """The client whose current key, or key replaced by a rotation, has this hash."""
        result = await self.session.exec(
            select(ApiClient).where(
                sa.or_(
                    col(ApiClient.key_hash) == key_hash,
                    col(ApiClient.previous_key_hash) == key_hash,
                )
            )
        )
        return result.first()

    async def by_name(self, name: str) -> ApiClient | None:
        result = await self.session.exec(select(ApiClient).where(ApiClient.name == name))
        return result.first()

    async def all(self) -> Sequence[ApiClient]:
        result = await self.session.exec(select(ApiClient).order_by(col(ApiClient.created_at)))
        return result.all()

    async def save(self, client: ApiClient) -> None:
        self.session.add(client)
        await self.session.flush()

    async def delete(self, client: ApiClient) -> None:
        await self.session.delete(client)
        await self.session.flush()


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            connection = await self.session.connection()
            await connection.execute(sa.insert(AuditEvent), list(events))


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
        """Accounts whose provider verified this address (served by ix_accounts_verified_email)."""
        result = await self.session.exec(
            select(Account)
            .where(
                Account.provider == provider,
                Account.email == normalize_email(email),
                col(Account.email_verified).is_(True),
            )
            .order_by(col(Account.subject))
            .limit(limit)
        )
        return result.all()

    async def resolve(self, provider: str, reference: str) -> Account | None:
        """An account by its provider subject id or, failing that, its verified email address.

        Email is not a stable key: an unverified address reaches nothing, and an address
        two accounts both verified (it moved between Google accounts) reaches neither,
        raising `AmbiguousAccount` with their subjects. Nothing else (which one was
        refreshed last, letter case) decides which account an email names.
        """
        account = await self.by_subject(provider, reference)
        if account is not None or "@" not in reference:
            return account
        holders = await self.with_verified_email(provider, reference)
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


class OAuthStateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, state: OAuthState) -> None:
        self.session.add(state)
        await self.session.flush()

    async def consume(self, state_hash: str, now: datetime) -> OAuthState | None:
        """Mark a live state used and return it; None if unknown, used or expired.

        One UPDATE ... RETURNING, so two callbacks racing with the same state cannot
        both get it.
        """
        statement = (
            sa.update(OAuthState)
            .where(
                col(OAuthState.state_hash) == state_hash,
                col(OAuthState.consumed_at).is_(None),
                col(OAuthState.expires_at) > now,
            )
            .values(consumed_at=now)
            .returning(*OAuthState.__table__.columns)  # type: ignore[attr-defined]
        )
        connection = await self.session.connection()
        row = (await connection.execute(statement)).mappings().first()
        return OAuthState.model_validate(dict(row)) if row is not None else None

    async def sealed_after(self, state_hash: str, limit: int) -> Sequence[sa.Row[str, str]]:
        """The next `limit` states' (state_hash, code_verifier), locked (key rotation)."""
        connection = await self.session.connection()
        result = await connection.execute(
            sa.select(col(OAuthState.state_hash), col(OAuthState.code_verifier))
            .where(col(OAuthState.state_hash) > state_hash)
            .order_by(col(OAuthState.state_hash))
            .limit(limit)
            .with_for_update()
        )
        return result.all()

    async def store_sealed(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write re-sealed verifiers, `{"row", "sealed_verifier"}` each, in one statement."""
        if rows:
            connection = await self.session.connection()
            await connection.execute(
                sa.update(OAuthState)
                .where(col(OAuthState.state_hash) == sa.bindparam("row"))
                .values(code_verifier=sa.bindparam("sealed_verifier")),
                list(rows),
            )

    async def purge_finished(self, now: datetime, *, limit: int) -> int:
        """Delete up to `limit` states that were used or have expired; how many went."""
        finished = (
            sa.select(col(OAuthState.state_hash))
            .where(
                sa.or_(col(OAuthState.consumed_at).is_not(None), col(OAuthState.expires_at) <= now)
            )
            .limit(limit)
        )
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(OAuthState).where(col(OAuthState.state_hash).in_(finished.scalar_subquery()))
        )
        return int(result.rowcount or 0)


class AuthorizationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, authorization: Authorization) -> None:
        self.session.add(authorization)
        await self.session.flush()

    async def of_client(self, authorization_id: str, client_id: str) -> Authorization | None:
        """The authorization if `client_id` started it; None otherwise (no one else may look)."""
        result = await self.session.exec(
            select(Authorization).where(
                Authorization.id == authorization_id, Authorization.client_id == client_id
            )
        )
        return result.first()

    async def get(self, authorization_id: str) -> Authorization | None:
        return await self.session.get(Authorization, authorization_id)

    async def save(self, authorization: Authorization) -> None:
        self.session.add(authorization)
        await self.session.flush()

    async def purge_created_before(self, before: datetime) -> int:
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(Authorization).where(col(Authorization.created_at) < before)
        )
        return int(result.rowcount or 0)


class RiscEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, event: RiscEvent) -> None:
        """Record a received security event; IntegrityError if its `jti` was seen (a replay)."""
        self.session.add(event)
        await self.session.flush()

    async def save(self, event: RiscEvent) -> None:
        self.session.add(event)
        await self.session.flush()

    async def of_account(self, account_id: str, *, since: datetime) -> Sequence[RiscEvent]:
        result = await self.session.exec(
            select(RiscEvent)
            .where(RiscEvent.account_id == account_id, col(RiscEvent.issued_at) >= since)
            .order_by(col(RiscEvent.issued_at).desc())
            .limit(20)
        )
        return result.all()

    async def purge_received_before(self, before: datetime) -> int:
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(RiscEvent).where(col(RiscEvent.received_at) < before)
        )
        return int(result.rowcount or 0)


class ChangeNotices:
    """NOTIFY other replicas of a change, delivered only when the transaction commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def send(self, channel: str, payload: str) -> None:
        connection = await self.session.connection()
        if is_postgres(connection.dialect):
            await connection.execute(sa.select(sa.func.pg_notify(channel, payload)))


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, delivery: WebhookDelivery) -> None:
        self.session.add(delivery)
        await self.session.flush()

    async def lease_next(self, now: datetime, lease_until: datetime) -> WebhookDelivery | None:
        """Claim the next due delivery until `lease_until`; None when nothing is due.

        The outer WHERE repeats the due condition, so two replicas racing for the same
        row cannot both claim it; on Postgres SKIP LOCKED keeps them off each other.
        """
        due = sa.and_(
            col(WebhookDelivery.delivered_at).is_(None),
            col(WebhookDelivery.failed_at).is_(None),
            col(WebhookDelivery.next_attempt_at) <= now,
        )
        candidate = (
            sa.select(col(WebhookDelivery.id))
            .where(due)
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(1)
        )
        connection = await self.session.connection()
        if is_postgres(connection.dialect):
            candidate = candidate.with_for_update(skip_locked=True)
        statement = (
            sa.update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == candidate.scalar_subquery(), due)
            .values(next_attempt_at=lease_until, attempts=col(WebhookDelivery.attempts) + 1)
            .returning(*WebhookDelivery.__table__.columns)  # type: ignore[attr-defined]
        )
        row = (await connection.execute(statement)).mappings().first()
        return WebhookDelivery.model_validate(dict(row)) if row is not None else None

    async def settle(
        self,
        delivery_id: str,
        *,
        delivered_at: datetime | None = None,
        next_attempt_at: datetime | None = None,
        failed_at: datetime | None = None,
        last_error: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"last_error": last_error}
        if delivered_at is not None:
            values["delivered_at"] = delivered_at
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if failed_at is not None:
            values["failed_at"] = failed_at
        connection = await self.session.connection()
        await connection.execute(
            sa.update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == delivery_id)
            .values(**values)
        )


class ReplicaRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, replica_id: str) -> Replica | None:
        return await self.session.get(Replica, replica_id)

    async def save(self, replica: Replica) -> None:
        self.session.add(replica)
        await self.session.flush()

    async def seen_since(self, since: datetime) -> Sequence[Replica]:
        result = await self.session.exec(
            select(Replica)
            .where(col(Replica.last_seen_at) >= since)
            .order_by(col(Replica.host), col(Replica.pid))
        )
        return result.all()

    async def delete(self, replica_id: str) -> None:
        connection = await self.session.connection()
        await connection.execute(sa.delete(Replica).where(col(Replica.id) == replica_id))

    async def purge_unseen_since(self, before: datetime) -> None:
        connection = await self.session.connection()
        await connection.execute(sa.delete(Replica).where(col(Replica.last_seen_at) < before))
