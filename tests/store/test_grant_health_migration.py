"""Migration 0007 on a database that already holds accounts: revoked ones get a documented
reason (what earlier versions recorded, Google's invalid_grant, names no cause), every one
a status change time and its creation as the earliest possible consent; and it goes back
down. Both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from alembic import command
from token_broker.store.database import create_engine
from token_broker.store.migrations import alembic_config

STAMP = sa.DateTime(timezone=True)
ACCOUNTS = sa.table(
    "accounts",
    *(sa.column(name) for name in ("id", "provider", "subject", "email", "scopes", "status",
                                   "last_refresh_error")),
    sa.column("created_at", STAMP),
    sa.column("updated_at", STAMP),
)  # fmt: skip
RISC_EVENTS = sa.table(
    "risc_events",
    *(sa.column(name) for name in ("jti", "event_types", "outcome")),
    sa.column("issued_at", STAMP),
    sa.column("received_at", STAMP),
)


async def to(connection: AsyncConnection, revision: str, *, down: bool = False) -> None:
    def run(sync_connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_connection
        (command.downgrade if down else command.upgrade)(config, revision)

    await connection.run_sync(run)


async def test_existing_accounts_get_reasons_and_times(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            await to(connection, "0003")
            when = datetime(2026, 11, 1, 10, tzinfo=UTC)
            for account_id, status, error in (
                ("a1", "active", None), ("a2", "revoked", "invalid_grant"),
            ):  # fmt: skip
                await connection.execute(
                    ACCOUNTS.insert().values(
                        id=account_id, provider="google", subject=f"s-{account_id}",
                        email=None, scopes="", status=status, created_at=when,
                        updated_at=datetime(2026, 11, 20, 10, tzinfo=UTC),
                        last_refresh_error=error,
                    )
                )  # fmt: skip
            await to(connection, "0007")
            rows = (
                await connection.execute(
                    sa.text(
                        "SELECT id, status_reason, status_detail, status_changed_at, granted_at, "
                        "newer_refresh_tokens FROM accounts ORDER BY id"
                    )
                )
            ).all()
            active, revoked = rows
            assert active.status_reason is None
            assert revoked.status_reason == "unknown_invalid_grant"
            assert "invalid_grant" in revoked.status_detail
            assert str(revoked.status_changed_at).startswith("2026-11-20")
            assert str(active.granted_at).startswith("2026-11-01")
            assert (active.newer_refresh_tokens, revoked.newer_refresh_tokens) == (0, 0)
            await connection.execute(
                RISC_EVENTS.insert().values(
                    jti="j1", issued_at=when, received_at=when, event_types="tokens_revoked",
                    outcome="applied",
                )
            )  # fmt: skip
            await to(connection, "0003", down=True)
            columns = (await connection.execute(sa.text("SELECT * FROM accounts"))).keys()
            assert "status_reason" not in columns
    finally:
        await engine.dispose()
