"""The audit trail.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.models import (
    AuditEvent,
)


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            connection = await self.session.connection()
            await connection.execute(sa.insert(AuditEvent), list(events))
