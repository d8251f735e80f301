"""Alembic environment: runs on a connection handed in by the broker, or on its own engine.

`token-broker migrate` and the test suite pass a connection through
`config.attributes["connection"]`; the plain `alembic` command builds an async
engine from `TOKEN_BROKER_DATABASE_URL`.
"""

import asyncio

from sqlalchemy import Connection
from sqlmodel import SQLModel

import token_broker.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from alembic import context
from token_broker.settings import load_settings
from token_broker.store.database import create_engine

target_metadata = SQLModel.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = config.attributes.get("database_url") or load_settings().database_url
    asyncio.run(run_with_own_engine(url))


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
main()
