"""The webhook outbox and its delivery leases.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.database import is_postgres
from token_broker.store.models import (
    WebhookDelivery,
)


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
