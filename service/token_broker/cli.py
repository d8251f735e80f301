"""`token-broker` (also `python -m token_broker`): serve, dev, sandbox, migrate, check, clients,
keys, watches.

Dev mode and the sandbox are imported only by their own commands: `serve` never
loads the fake Google into a production process.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from dotenv import dotenv_values

from token_broker.app import Components, build_http_client, create_app, tracing_from_environment
from token_broker.errors import BrokerError
from token_broker.google.discovery import ONE_TRY, DiscoveryFailed, discover_endpoints
from token_broker.google.probes import probe_upstreams
from token_broker.google.transport import Upstream
from token_broker.kit.clock import rfc3339, utcnow
from token_broker.observability.logs import configure_logging
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.services.key_rotation import KeyRotation, ReplicasLackPrimaryKey
from token_broker.services.mailbox_watches import Renewal, watch_listing
from token_broker.services.replicas import describe, lacking_key, live_replicas
from token_broker.services.secret_sample import sample_secrets
from token_broker.settings import ConfigurationError, Settings, env_name, load_settings
from token_broker.store.database import (
    Database,
    create_engine,
    describe_database,
    is_postgres,
    missing_sqlite_file,
)
from token_broker.store.migrations import head_revision, migrate, schema_revision
from token_broker.store.sealing import DecryptionError, Keyring, KeyringError, keyring_from_settings
from token_broker.web.serving import serve as serve_guarded

T = TypeVar("T")

app = typer.Typer(
    help="Token Broker: Google OAuth offline access and Gmail listings for internal services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
clients_app = typer.Typer(help="API clients and their keys.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys for secrets at rest.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
watches_app = typer.Typer(help="Gmail watches (push notifications).", no_args_is_help=True)
app.add_typer(watches_app, name="watches")


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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the broker's REST API."""
    settings = settings_or_exit()
    problems = settings.serving_problems()
    if settings.encryption_keys is not None:
        try:
            keyring_from_settings(settings)
        except ConfigurationError as error:
            problems += error.problems
    try:
        tracing_from_environment()
    except ConfigurationError as error:
        problems += error.problems
    if settings.metrics_port == port:
        problems.append(f"{env_name('metrics_port')}: must differ from the API's --port {port}")
    if problems:
        raise fail(["configuration error:", *(f"  {p}" for p in problems)])
    if workers > 1 and not is_postgres(settings.database_url):
        raise fail(
            [
                f"{env_name('database_url')}: several workers need Postgres; SQLite serves one "
                "process (its refresh lock is in-process)"
            ]
        )
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers write their samples here and /metrics sums them (observability/metrics.py).
        samples = tempfile.mkdtemp(prefix="token-broker-metrics-")
        atexit.register(shutil.rmtree, samples, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = samples
    # uvicorn re-raises SIGTERM after its graceful shutdown, once this handler is back in
    # place: a drained shutdown then exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve_guarded(
        "token_broker.app:create_app_from_environment",
        settings,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Where the SQLite database, keyring and sandbox state live.")
    ] = Path(".token-broker-dev"),
    force: Annotated[
        bool,
        typer.Option("--force", help="Start although the configuration looks like production."),
    ] = False,
) -> None:
    """Run the broker with a sandbox Google in one process: SQLite, generated keyring, dev key."""
    from token_broker.dev import (
        DataDirInUse,
        PortInUse,
        banner,
        dev_app,
        listen,
        lock_data_dir,
        prepare,
        production_signals,
    )
    from token_broker.dev import serve as serve_dev

    signals = production_signals({**dotenv_values(".env"), **os.environ})  # type: ignore[dict-item]
    if signals and not force:
        raise fail(
            [
                "refusing dev mode: this configuration looks like production:",
                *(f"  {signal}" for signal in signals),
                "dev mode runs a fake Google; pass --force to start anyway (using that database).",
            ]
        )
    # The port first, then the folder: a second instance stops before it changes anything.
    try:
        listener = listen(host, port)
    except PortInUse as error:
        raise fail(
            [f"{error} (is another token-broker dev running?); choose a free one with --port"]
        ) from None
    try:
        lock = lock_data_dir(data_dir, f"http://{host}:{port}")
    except DataDirInUse as error:
        listener.close()
        raise fail(
            [
                f"refusing dev mode: {error}.",
                "A second instance needs its own folder: add --data-dir, e.g. "
                f"--data-dir {data_dir}-{port}",
            ]
        ) from None
    with lock, listener:
        configure_logging("INFO", "text")
        try:
            tracing_from_environment()
            environment = prepare(data_dir, host, port, keep_database_url=force)
        except ConfigurationError as error:
            raise fail(["configuration error:", *(f"  {p}" for p in error.problems)]) from None
        serve_dev(
            dev_app(environment),
            environment.settings,
            listener,
            lambda: typer.echo(banner(environment)),
        )


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port to bind.")],
    client_id: Annotated[str, typer.Option(help="The OAuth client the broker will use.")],
    client_secret: Annotated[str, typer.Option(help="That client's secret.")],
    redirect_uri: Annotated[
        list[str] | None,
        typer.Option(help="A redirect URI the client may use; repeat for more."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Run the sandbox Google on its own: a staging provider for a broker in production mode
    (TOKEN_BROKER_ISSUER=its URL), or a stand-in for other services' tests."""
    from google_sandbox.server import serve as serve_sandbox

    serve_sandbox(
        host=host,
        port=port,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=redirect_uri or [],
    )


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


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Argument(help="A unique name for the calling service.")],
    permission: Annotated[
        list[Permission], typer.Option("--permission", "-p", help="Repeat for each permission.")
    ],
) -> None:
    """Create an API client and print its key (shown this once only)."""
    settings = settings_or_exit()
    client, key = with_database(
        settings, lambda db: ClientService(db).create(name, [p.value for p in permission])
    )
    typer.echo(f"created API client {client.name} ({client.permissions})", err=True)
    typer.echo("its key follows; it is shown only now:", err=True)
    typer.echo(key)


@clients_app.command("list")
def clients_list() -> None:
    """List API clients: names, permissions, created time and status. Never keys."""
    settings = settings_or_exit()
    clients = with_database(settings, lambda db: ClientService(db).list())
    now = utcnow()
    typer.echo(f"{'NAME':<24} {'PERMISSIONS':<56} {'CREATED':<21} STATUS")
    for client in clients:
        if client.revoked_at is not None:
            status = f"revoked {rfc3339(client.revoked_at, 'seconds')}"
        else:
            status = "active"
            until = client.previous_key_expires_at
            if until is not None and until > now:
                status += f"; the replaced key works until {rfc3339(until, 'seconds')}"
        typer.echo(
            f"{client.name:<24} {client.permissions:<56} "
            f"{rfc3339(client.created_at, 'seconds'):<21} {status}"
        )


@clients_app.command("rotate")
def clients_rotate(
    name: Annotated[str, typer.Argument(help="The client's name.")],
    overlap: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=30 * 86_400,
            help="Seconds the current key keeps working (default: "
            "TOKEN_BROKER_API_KEY_ROTATION_OVERLAP_SECONDS, 86400). 0 ends it now.",
        ),
    ] = None,
) -> None:
    """Give a client a new key (printed once); the current one works for the overlap."""
    settings = settings_or_exit()
    seconds = settings.api_key_rotation_overlap_seconds if overlap is None else overlap
    client, key = with_database(
        settings, lambda db: ClientService(db).rotate(name, overlap_seconds=seconds)
    )
    until = client.previous_key_expires_at
    typer.echo(
        f"rotated the key of API client {client.name}; "
        + (
            f"the previous key works until {rfc3339(until, 'seconds')}"
            if until is not None
            else "the previous key no longer works"
        ),
        err=True,
    )
    typer.echo("its new key follows; it is shown only now:", err=True)
    typer.echo(key)


@clients_app.command("revoke")
def clients_revoke(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Revoke an API client's keys (it stays listed, its name taken, until deleted)."""
    settings = settings_or_exit()
    client = with_database(settings, lambda db: ClientService(db).revoke(name))
    typer.echo(f"revoked API client {client.name}")


@clients_app.command("delete")
def clients_delete(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Delete an API client and its keys; its name is free again, the audit log keeps it."""
    settings = settings_or_exit()
    client = with_database(settings, lambda db: ClientService(db).delete(name))
    typer.echo(f"deleted API client {client.name} (id {client.id}; its audit history remains)")


@keys_app.command("generate")
def keys_generate(
    kid: Annotated[str | None, typer.Option(help="Key id (default: k<date><random>).")] = None,
) -> None:
    """Print a new kid:base64key entry; put it first in TOKEN_BROKER_ENCRYPTION_KEYS."""
    try:
        typer.echo(Keyring.generate_entry(kid))
    except KeyringError as error:
        raise fail([f"error: {error}"]) from None


@keys_app.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows per transaction.")
    ] = 1000,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Rotate although a live replica lacks the primary key (it will fail)."
        ),
    ] = False,
) -> None:
    """Re-seal every stored secret under the primary (first) key; safe while serving.

    Refuses while a live replica (one whose heartbeat is recent) lacks the primary key.
    """
    settings = settings_or_exit()
    if settings.encryption_keys is None:
        raise fail([f"{env_name('encryption_keys')}: required"])
    try:
        keyring = keyring_from_settings(settings)
    except ConfigurationError as error:
        raise fail(error.problems) from None
    try:
        report = with_database(
            settings, lambda db: KeyRotation(db, keyring, batch_size=batch_size).run(force=force)
        )
    except ReplicasLackPrimaryKey as error:
        raise fail(
            [
                f"refusing to rotate: {len(error.replicas)} live replica(s) do not hold the new "
                f"primary key {error.primary}; they could not open what it seals:",
                *(f"  {describe(replica)}" for replica in error.replicas),
                f"Put {error.primary} first in {env_name('encryption_keys')} on every replica "
                "and restart them (or wait until stopped ones drop out, 30 s); "
                "--force rotates anyway.",
            ],
            code=1,
        ) from None
    except DecryptionError as error:
        raise fail(
            [f"error: {error}; batches before it are done: fix the keyring, run again"], code=1
        ) from None
    details = ", ".join(f"{name}: {count}" for name, count in sorted(report.resealed.items()))
    typer.echo(
        f"examined {report.examined} rows, re-sealed {report.total_resealed} values"
        + (f" ({details})" if details else "")
        + f"; every value is now under key {report.primary}"
    )


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


@watches_app.command("list")
def watches_list() -> None:
    """List Gmail watches: account, state, Gmail's expiry, next renewal, last push, last error."""
    settings = settings_or_exit()
    rows = with_database(settings, watch_listing)
    typer.echo(
        f"{'ACCOUNT':<32} {'STATE':<8} {'EXPIRES':<26} {'RENEWS':<26} {'LAST PUSH':<26} LAST ERROR"
    )
    for watch, email in rows:
        typer.echo(
            f"{(email or watch.account_id):<32} {watch.status:<8} {_time(watch.expires_at):<26} "
            f"{_time(watch.renew_at):<26} {_time(watch.last_push_at):<26} "
            f"{watch.last_error or '-'}"
        )
    if not settings.gmail_push_enabled:
        typer.echo(f"(push is off: {env_name('gmail_push_topic')} is not set)", err=True)


@watches_app.command("renew")
def watches_renew(
    accounts: Annotated[
        list[str] | None, typer.Argument(help="Accounts (email or subject id) to renew now.")
    ] = None,
    every_watch: Annotated[
        bool, typer.Option("--all", help="Renew every watch that is not stopped.")
    ] = False,
) -> None:
    """Call users.watch now (at the configured rate); one line per account; exit 1 if any failed."""
    settings = settings_or_exit()
    if not settings.gmail_push_enabled:
        raise fail([f"{env_name('gmail_push_topic')}: not set; push (and its watches) is off"])
    if not accounts and not every_watch:
        raise fail(["name the accounts to renew, or pass --all"])

    async def renew(components: Components) -> list[tuple[str, Renewal]]:
        keeper = components.watches
        assert keeper is not None
        names: dict[str, str] = {}
        if every_watch:
            for watch, email in await keeper.listing():
                if watch.status != "stopped":
                    names[watch.account_id] = email or watch.account_id
        for reference in accounts or []:
            names[await keeper.resolve(reference)] = reference
        renewed = await keeper.renew_paced(list(names))
        return [(names[r.account_id], r) for r in renewed]

    results = with_services(settings, renew)
    for name, renewal in results:
        detail = _time(renewal.expires_at) if renewal.outcome == "ok" else renewal.error or ""
        typer.echo(f"{name:<32} {renewal.outcome:<8} {detail}")
    typer.echo(f"renewed {sum(r.outcome == 'ok' for _, r in results)} of {len(results)} watches")
    if any(r.outcome == "failed" for _, r in results):
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="token-broker")
