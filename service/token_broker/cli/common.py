"""What every command shares: one-line failures, settings, a database or the services for
the length of one command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer

from token_broker.app import Components, create_app
from token_broker.errors import BrokerError
from token_broker.settings import ConfigurationError, Settings, load_settings
from token_broker.store.database import (
    Database,
    create_engine,
    describe_database,
    missing_sqlite_file,
)
from token_broker.store.migrations import head_revision, schema_revision

T = TypeVar("T")


def fail(lines: list[str], code: int = 2) -> typer.Exit:
    for line in lines:
        typer.echo(line, err=True)
    return typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigurationError as error:
        raise fail(["configuration error:", *(f"  {p}" for p in error.problems)]) from None


def with_database(settings: Settings, operation: Callable[[Database], Awaitable[T]]) -> T:
    """Run `operation` on the configured database, once it exists and is at head.

    Otherwise one line says which database, and what to do (run `migrate`, usually).
    """
    where = describe_database(settings)
    if missing_sqlite_file(settings.database_url) is not None:
        raise fail([f"no database at {where}; create it with `token-broker migrate`"], code=1)

    async def run() -> T:
        database = Database(create_engine(settings.database_url))
        try:
            try:
                revision = await schema_revision(database)
            except Exception as error:
                raise fail(
                    [f"database {where} is unreachable ({type(error).__name__})"], code=1
                ) from None
            if revision != head_revision():
                raise fail(
                    [
                        f"database {where} is at revision {revision or 'nothing'}, this broker "
                        f"needs {head_revision()}: run `token-broker migrate`"
                    ],
                    code=1,
                )
            return await operation(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except BrokerError as error:
        raise fail([f"error: {error.detail}"], code=1) from None


def with_services(settings: Settings, operation: Callable[[Components], Awaitable[T]]) -> T:
    """Run `operation` with the broker's services, built exactly as `serve` builds them."""

    async def run() -> T:
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            return await operation(application.state.broker)

    try:
        return asyncio.run(run())
    except BrokerError as error:
        raise fail([f"error: {error.detail}"], code=1) from None
    except ConfigurationError as error:
        raise fail(["configuration error:", *(f"  {p}" for p in error.problems)]) from None
