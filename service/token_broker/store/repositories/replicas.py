"""Replica heartbeats: which key ids each live replica holds.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.models import (
    Replica,
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
