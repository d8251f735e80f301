"""`migrate` and `check`: the schema, and whether this configuration can serve."""

from __future__ import annotations

import asyncio

import typer

from token_broker.app import build_http_client
from token_broker.cli.app import app
from token_broker.cli.common import fail, settings_or_exit
from token_broker.google.discovery import ONE_TRY, DiscoveryFailed, discover_endpoints
from token_broker.google.probes import probe_upstreams
from token_broker.google.transport import Upstream
from token_broker.services.replicas import describe, lacking_key, live_replicas
from token_broker.services.secret_sample import sample_secrets
from token_broker.settings import ConfigurationError, Settings, env_name, load_settings
from token_broker.store.database import (
    Database,
    create_engine,
    describe_database,
    missing_sqlite_file,
)
from token_broker.store.migrations import head_revision, migrate, schema_revision
from token_broker.store.sealing import Keyring, keyring_from_settings


@app.command("migrate")
def migrate_command() -> None:
    """Wait for the database (bounded), then upgrade its schema to the latest migration."""
    settings = settings_or_exit()
    where = describe_database(settings)
    created = missing_sqlite_file(settings.database_url) is not None
    typer.echo(f"{'creating' if created else 'migrating'} database {where}")
    try:
        revision = asyncio.run(
            migrate(settings.database_url, wait_seconds=settings.migrate_wait_seconds)
        )
    except Exception as error:
        raise fail([f"migration failed: {type(error).__name__}: {error}"], code=1) from None
    typer.echo(f"database at revision {revision} (head)")


@app.command()
def check() -> None:
    """Configuration, keyring, database, schema, stored secrets, replicas and every upstream;
    one line per check, naming the database and each URL it tried."""
    try:
        settings = load_settings()
    except ConfigurationError as error:
        raise fail([f"FAIL configuration: {p}" for p in error.problems], code=1) from None
    report = CheckReport()
    problems = settings.serving_problems()
    report.add("configuration", "; ".join(problems) if problems else None)
    keyring: Keyring | None = None
    if settings.encryption_keys is None:
        report.add("keyring", f"{env_name('encryption_keys')} is not set")
    else:
        try:
            keyring = keyring_from_settings(settings)
            report.add(f"keyring ({len(keyring.key_ids)} keys, primary {keyring.primary_kid})")
        except ConfigurationError as error:
            report.add("keyring", "; ".join(error.problems))
    asyncio.run(_check_database(settings, keyring, report))
    asyncio.run(_check_upstreams(settings, report))
    for line in report.lines:
        typer.echo(line)
    if report.failed:
        raise typer.Exit(1)


class CheckReport:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed = False

    def add(self, name: str, problem: str | None = None) -> None:
        self.failed = self.failed or problem is not None
        self.lines.append(f"ok   {name}" if problem is None else f"FAIL {name}: {problem}")


async def _check_database(settings: Settings, keyring: Keyring | None, report: CheckReport) -> None:
    where = describe_database(settings)
    if missing_sqlite_file(settings.database_url) is not None:
        report.add("database", f"no database at {where}; create it with `token-broker migrate`")
        return
    database = Database(create_engine(settings.database_url))
    try:
        try:
            await database.ping()
        except Exception as error:
            report.add("database", f"{where} is unreachable ({type(error).__name__})")
            return
        report.add(f"database {where}")
        revision, head = await schema_revision(database), head_revision()
        if revision != head:
            report.add("schema", f"at {revision or 'nothing'}, head {head}; run migrate")
            return
        report.add(f"schema (at {head})")
        if keyring is not None:
            sample = await sample_secrets(database, keyring)
            problem = sample.problem()
            if problem is None:
                report.add(f"secrets ({sample.opened} sampled values open)")
            else:
                report.add("secrets", problem)
            replicas = await live_replicas(database)
            behind = lacking_key(replicas, keyring.primary_kid)
            if behind:
                report.add(
                    "replicas",
                    f"{len(behind)} of {len(replicas)} live replicas lack primary key "
                    f"{keyring.primary_kid} (restart them with it): "
                    + "; ".join(describe(replica) for replica in behind),
                )
            else:
                held = f", all hold primary {keyring.primary_kid}" if replicas else ""
                report.add(f"replicas ({len(replicas) or 'none'} live{held})")
    finally:
        await database.dispose()


async def _check_upstreams(settings: Settings, report: CheckReport) -> None:
    async with build_http_client(settings) as http:
        upstream = Upstream(http)
        try:
            endpoints = await discover_endpoints(upstream, settings, backoff=ONE_TRY)
        except DiscoveryFailed as error:
            report.add("provider discovery", str(error))
            return
        if endpoints.discovered_from is not None:
            report.add(f"provider discovery {endpoints.discovered_from}")
        for probe in await probe_upstreams(upstream, endpoints):
            if probe.problem is not None:
                report.add(probe.name, probe.problem)
            else:
                report.add(f"{probe.name} {probe.url} ({probe.answer})")
