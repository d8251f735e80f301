import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from alembic import command
from token_broker.store.database import Database, create_engine
from token_broker.store.migrations import alembic_config, head_revision, migrate, schema_revision


# SQLite cannot reflect expression indexes (the keep-alive one), so Alembic skips it
# there with a warning; Postgres compares it.
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index:sqlalchemy.exc.SAWarning")
async def test_models_and_latest_migration_agree(database: Database) -> None:
    def differences(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)

    async with database.engine.connect() as connection:
        diff = await connection.run_sync(differences)
    assert diff == []


async def test_migrate_reaches_head_on_an_empty_database(empty_database_url: str) -> None:
    url = empty_database_url
    assert await migrate(url, wait_seconds=5) == head_revision()
    database = Database(create_engine(url))
    assert await schema_revision(database) == head_revision()
    await database.dispose()
    # Running it again is a no-op.
    assert await migrate(url, wait_seconds=5) == head_revision()


def test_migrate_gives_up_on_an_unreachable_database_within_its_bound(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "token_broker", "migrate"],
        env={
            "PATH": "/usr/bin:/bin",
            "TOKEN_BROKER_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
            "TOKEN_BROKER_MIGRATE_WAIT_SECONDS": "1",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "migration failed" in result.stderr


async def test_the_scale_migration_goes_down_and_up_again(empty_database_url: str) -> None:
    """0004 (refresh leases, walk and keep-alive indexes) reverses cleanly on both."""

    def down_and_up(connection: sa.Connection) -> tuple[set[str], set[str]]:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        command.downgrade(config, "0002")
        before = {column["name"] for column in sa.inspect(connection).get_columns("accounts")}
        command.upgrade(config, "head")
        after = {column["name"] for column in sa.inspect(connection).get_columns("accounts")}
        return before, after

    engine = create_engine(empty_database_url)
    async with engine.begin() as connection:
        before, after = await connection.run_sync(down_and_up)
    await engine.dispose()
    assert "refresh_lease_id" not in before
    assert {"refresh_lease_id", "refresh_lease_until"} <= after
