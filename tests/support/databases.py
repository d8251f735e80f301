"""Both databases for every storage test: a migrated schema per run, an empty one per test.

Every test that takes `backend` runs on SQLite and on Postgres. Postgres is the
server at TOKEN_BROKER_TEST_POSTGRES_URL (default: 127.0.0.1:5432 as postgres);
each run creates its own database, migrates it once, and drops it at the end; the
tables are emptied after each test. When Postgres cannot be reached its tests are
skipped, unless TOKEN_BROKER_TEST_REQUIRE_POSTGRES=1 (CI), which makes it a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import token_broker.store.models  # noqa: F401  (registers the tables)
from token_broker.store.database import Database, create_engine
from token_broker.store.migrations import upgrade_to_head

ADMIN_URL = os.environ.get(
    "TOKEN_BROKER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("TOKEN_BROKER_TEST_REQUIRE_POSTGRES") == "1"


async def _create_postgres_database() -> str | None:
    name = f"token_broker_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        if REQUIRE_POSTGRES:
            raise
        print(f"\nPostgres unreachable at {ADMIN_URL} ({type(error).__name__}): skipping it")
        return None
    finally:
        await admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url)
    async with engine.begin() as connection:
        await upgrade_to_head(connection)
    await engine.dispose()
    return url


async def _drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str | None]:
    url = await _create_postgres_database()
    yield url
    if url is not None:
        await _drop_postgres_database(url)


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await upgrade_to_head(connection)
    await engine.dispose()
    return path


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str, postgres_url: str | None, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[str]:
    """A migrated, empty database for this test."""
    if backend == "sqlite":
        path = tmp_path / "broker.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if postgres_url is None:
        pytest.skip("Postgres is not reachable")
    yield postgres_url
    await truncate_all(postgres_url)


@pytest.fixture
async def empty_database_url(
    backend: str, postgres_url: str | None, tmp_path: Path
) -> AsyncIterator[str]:
    """A database with no schema at all, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/empty.db"
        return
    if postgres_url is None:
        pytest.skip("Postgres is not reachable")
    name = f"tb_empty_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    await _drop_postgres_database(url)


async def truncate_all(url: str) -> None:
    tables = ", ".join(f'"{table.name}"' for table in SQLModel.metadata.sorted_tables)
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))
    await engine.dispose()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(create_engine(database_url))
    yield db
    await db.dispose()
