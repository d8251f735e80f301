"""Engines and sessions for Postgres (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry.trace import Tracer
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.observability.tracing import trace_statements
from token_broker.settings import Settings, env_name


def is_postgres(target: str | Dialect) -> bool:
    """Whether a database URL or a connection's dialect is Postgres: the one place that asks.

    Postgres runs many replicas (row locks, LISTEN/NOTIFY, advisory locks); SQLite
    serves one process.
    """
    if isinstance(target, Dialect):
        return target.name == "postgresql"
    return target.partition(":")[0].partition("+")[0] == "postgresql"


def describe_database(settings: Settings) -> str:
    """The database the settings name, as an operator should see it: no password, an
    absolute path for SQLite, and whether it is only the default."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=str(Path(str(url.database)).resolve()))
    text = url.render_as_string(hide_password=True)
    if "database_url" not in settings.model_fields_set:
        text += f" (the default: {env_name('database_url')} is not set)"
    return text


def missing_sqlite_file(database_url: str) -> Path | None:
    """The SQLite file a URL names, when it does not exist (connecting would create it)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(str(url.database))
    return None if path.exists() else path.resolve()


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 5.0,
    tracer: Tracer | None = None,
    lock_timeout: float | None = None,
) -> AsyncEngine:
    """An engine; on Postgres, `lock_timeout` (seconds) bounds every wait for a row lock
    (set once per connection, not per transaction: a round trip saved on every lock)."""
    engine = _create_engine(url, pool_size, max_overflow, pool_timeout, lock_timeout)
    if tracer is not None:
        trace_statements(engine.sync_engine, tracer, engine.dialect.name)
    return engine


def _create_engine(
    url: str, pool_size: int, max_overflow: int, pool_timeout: float, lock_timeout: float | None
) -> AsyncEngine:
    if not is_postgres(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa_create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            connect_args={"timeout": pool_timeout},
        )
        sa.event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    server_settings = {"application_name": "token-broker"}
    if lock_timeout is not None:
        server_settings["lock_timeout"] = str(max(1, int(lock_timeout * 1000)))
    return sa_create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args={"server_settings": server_settings},
    )


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; the busy timeout queues writers instead
    # of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One engine and its session factory; services open one transaction per operation."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @classmethod
    def for_settings(cls, settings: Settings, *, tracer: Tracer | None = None) -> Database:
        return cls(
            create_engine(
                settings.database_url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_timeout=settings.db_pool_timeout_seconds,
                tracer=tracer,
                lock_timeout=settings.lock_timeout_seconds,
            )
        )

    @property
    def is_postgres(self) -> bool:
        return is_postgres(self.engine.dialect)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for a single read, outside any transaction: no BEGIN and COMMIT round
        trips (a third of the cost of the reads the token paths make under load)."""
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            async with AsyncSession(bind=connection, expire_on_commit=False) as session:
                yield session

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


async def wait_for_database(engine: AsyncEngine, within_seconds: float) -> None:
    """Poll until the database answers, up to `within_seconds`; then re-raise its error."""
    deadline = time.monotonic() + within_seconds
    delay = 0.25
    while True:
        try:
            async with engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
            return
        except (OperationalError, DBAPIError, OSError):
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
