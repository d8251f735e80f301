"""One replica at a time runs a periodic job: a Postgres advisory lock held on its own connection.

The lock dies with its connection, so a replica that crashes mid-job frees it. SQLite
serves one process, which always leads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa

from token_broker.store.database import Database, is_postgres


@asynccontextmanager
async def leadership(database: Database, key: int) -> AsyncIterator[bool]:
    """Yields whether this replica leads the job `key` for the duration of the block."""
    async with database.engine.connect() as connection:
        if not is_postgres(connection.dialect):
            yield True
            return
        acquired = bool(await connection.scalar(sa.select(sa.func.pg_try_advisory_lock(key))))
        try:
            yield acquired
        finally:
            if acquired:
                await connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            await connection.commit()
