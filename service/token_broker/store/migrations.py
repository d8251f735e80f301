"""Schema migrations (Alembic): where they live, the head revision, upgrading a database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

from alembic import command
from token_broker.store.database import Database, create_engine, wait_for_database

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def migrations_dir() -> Path:
    """`alembic/` at the top of a checkout; bundled inside the package in a wheel."""
    bundled = _PACKAGE_DIR / "_migrations"
    return bundled if bundled.is_dir() else _PACKAGE_DIR.parents[1] / "alembic"


async def schema_revision(database: Database) -> str | None:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_current_revision)


def _current_revision(connection: sa.Connection) -> str | None:
    # Read Alembic's table directly: a MigrationContext logs two INFO lines per call, and
    # /readyz asks on every probe.
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    revision = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return str(revision) if revision is not None else None


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.attributes["database_url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


async def upgrade_to_head(connection: AsyncConnection) -> None:
    """Apply every migration on an open connection (the caller commits)."""

    def upgrade(sync_connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_connection
        command.upgrade(config, "head")

    await connection.run_sync(upgrade)


async def migrate(url: str, *, wait_seconds: float) -> str:
    """Wait for the database, upgrade it to head, and return the head revision."""
    engine = create_engine(url)
    try:
        await wait_for_database(engine, wait_seconds)
        async with engine.begin() as connection:
            await upgrade_to_head(connection)
    finally:
        await engine.dispose()
    return head_revision()
