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
    RiscEvent,
    WebhookDelivery,
    normalize_email,
)

# An `ambiguous_account` problem lists at most this many subjects.
MAX_SUBJECTS_LISTED = 20


class ApiClientRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, client: ApiClient) -> None:
        self.session.add(client)
        await self.session.flush()

    async def by_key_hash(self, key_hash: str) -> ApiClient | None:
        result = await self.session.exec(select(ApiClient).where(ApiClient.key_hash == key_hash))
        return result.first()

    async def by_name(self, name: str) -> ApiClient | None:
        result = await self.session.exec(select(ApiClient).where(ApiClient.name == name))
        return result.first()

    async def all(self) -> Sequence[ApiClient]:
        result = await self.session.exec(select(ApiClient).order_by(col(ApiClient.created_at)))
        return result.all()

    async def revoke(self, client: ApiClient, at: datetime) -> None:
        client.revoked_at = at
        self.session.add(client)
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

    async def get_locked(self, account_id: str, *, wait_seconds: float) -> Account | None:
        """The account with its row locked, waiting at most `wait_seconds` for another holder.

        Past the wait Postgres raises a lock timeout, which callers see as a database
        outage to retry (503), not a hang.
        """
        connection = await self.session.connection()
        if is_postgres(connection.dialect):
            timeout_ms = max(1, int(wait_seconds * 1000))
            await connection.execute(sa.text(f"SET LOCAL lock_timeout = {timeout_ms}"))
        return await self.get(account_id, for_update=True)

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
            created_at, account_id = after
            statement = statement.where(
                sa.or_(
                    col(Account.created_at) > created_at,
                    sa.and_(col(Account.created_at) == created_at, col(Account.id) > account_id),
                )
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

    async def batch_after(self, account_id: str, limit: int) -> Sequence[Account]:
        """The next `limit` accounts by id, locked for update (key rotation)."""
        result = await self.session.exec(
            select(Account)
            .where(col(Account.id) > account_id)
            .order_by(col(Account.id))
            .limit(limit)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return result.all()

    async def delete(self, account: Account) -> None:
        await self.session.delete(account)
        await self.session.flush()


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

    async def batch_after(self, state_hash: str, limit: int) -> Sequence[OAuthState]:
        result = await self.session.exec(
            select(OAuthState)
            .where(col(OAuthState.state_hash) > state_hash)
            .order_by(col(OAuthState.state_hash))
            .limit(limit)
            .with_for_update()
        )
        return result.all()

    async def save(self, state: OAuthState) -> None:
        self.session.add(state)
        await self.session.flush()

    async def purge_expired(self, before: datetime) -> int:
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(OAuthState).where(col(OAuthState.expires_at) < before)
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
