"""Cross-Account Protection events received, for replay checks and history.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.models import (
    RiscEvent,
)


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
