"""Change notices that tell every replica to drop what it cached.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.database import is_postgres


class ChangeNotices:
    """NOTIFY other replicas of a change, delivered only when the transaction commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def send(self, channel: str, payload: str) -> None:
        connection = await self.session.connection()
        if is_postgres(connection.dialect):
            await connection.execute(sa.select(sa.func.pg_notify(channel, payload)))
