"""`token-broker` (also `python -m token_broker`): serve, dev, sandbox, migrate, check, clients,
keys, accounts, risc.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
import uvicorn
from dotenv import dotenv_values

from token_broker.app import build_http_client
from token_broker.errors import BrokerError
from token_broker.google.oauth import OAuthClient
from token_broker.google.risc import DOCUMENTED_EVENT_TYPES, EVENT_TYPES
from token_broker.google.risc_api import (
    RiscApiError,
    RiscStreamApi,
    ServiceAccount,
    ServiceAccountFileError,
)
from token_broker.google.transport import Upstream
from token_broker.kit.retry import TransientError
from token_broker.observability.logs import configure_logging
from token_broker.services.account_health import HealthReport, health_report
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.services.grant_health import StatusReason
from token_broker.services.key_rotation import KeyRotation
from token_broker.settings import ConfigurationError, Settings, env_name, load_settings
from token_broker.store.database import Database, create_engine, is_postgres
from token_broker.store.migrations import head_revision, migrate, schema_revision
from token_broker.store.sealing import DecryptionError, Keyring, KeyringError, keyring_from_settings

T = TypeVar("T")

app = typer.Typer(
    help="Token Broker: Google OAuth offline access and Gmail listings for internal services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
clients_app = typer.Typer(help="API clients and their keys.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys for secrets at rest.", no_args_is_help=True)
accounts_app = typer.Typer(help="Connected accounts and their grants.", no_args_is_help=True)
risc_app = typer.Typer(
    help="Cross-Account Protection: Google's security event stream to POST /v1/risc.",
    no_args_is_help=True,
)
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")
app.add_typer(risc_app, name="risc")


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
    async def run() -> T:
        database = Database(create_engine(settings.database_url))
        try:
            return await operation(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except BrokerError as error:
        raise fail([f"error: {error.detail}"], code=1) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the broker's REST API."""
    settings = settings_or_exit()
    problems = settings.serving_problems()
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
    uvicorn.run(
        "token_broker.app:create_app_from_environment",
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
    from token_broker.dev import banner, dev_app, prepare, production_signals

    signals = production_signals({**dotenv_values(".env"), **os.environ})  # type: ignore[dict-item]
    if signals and not force:
        raise fail(
            [
                "refusing dev mode: this configuration looks like production:",
                *(f"  {signal}" for signal in signals),
                "dev mode runs a fake Google; pass --force to start anyway (using that database).",
            ]
        )
    configure_logging("INFO", "text")
    try:
        environment = prepare(data_dir, host, port, keep_database_url=force)
    except ConfigurationError as error:
        raise fail(["configuration error:", *(f"  {p}" for p in error.problems)]) from None
    typer.echo(banner(environment))
    uvicorn.run(
        dev_app(environment),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
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
    """Run the sandbox Google on its own: a stand-in provider for other services' tests."""
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
    try:
        revision = asyncio.run(
            migrate(settings.database_url, wait_seconds=settings.migrate_wait_seconds)
        )
    except Exception as error:
        raise fail([f"migration failed: {type(error).__name__}: {error}"], code=1) from None
    typer.echo(f"database at revision {revision} (head)")


@app.command()
def check() -> None:
    """Validate configuration, database, schema and keyring; one line per check."""
    try:
        settings = load_settings()
    except ConfigurationError as error:
        raise fail([f"FAIL configuration: {p}" for p in error.problems], code=1) from None
    lines: list[str] = []
    failed = False

    def report(name: str, problem: str | None) -> None:
        nonlocal failed
        failed = failed or problem is not None
        lines.append(f"ok   {name}" if problem is None else f"FAIL {name}: {problem}")

    problems = settings.serving_problems()
    report("configuration", "; ".join(problems) if problems else None)
    if settings.encryption_keys is None:
        report("keyring", f"{env_name('encryption_keys')} is not set")
    else:
        try:
            keyring = keyring_from_settings(settings)
            report(f"keyring ({len(keyring.key_ids)} keys, primary {keyring.primary_kid})", None)
        except ConfigurationError as error:
            report("keyring", "; ".join(error.problems))

    async def database_checks(database: Database) -> None:
        try:
            await database.ping()
        except Exception as error:
            report("database", f"unreachable: {type(error).__name__}")
            return
        report("database", None)
        revision = await schema_revision(database)
        head = head_revision()
        report(
            "schema",
            None if revision == head else f"at {revision or 'nothing'}, head {head}; run migrate",
        )

    with_database(settings, database_checks)
    if settings.google_client_id:
        try:
            answer = asyncio.run(_probe_provider(settings))
            report(f"provider: {answer}", None)
        except TransientError as error:
            report("provider", f"unreachable ({error.reason})")
    for line in lines:
        typer.echo(line)
    if failed:
        raise typer.Exit(1)


async def _probe_provider(settings: Settings) -> str:
    async with build_http_client(settings) as http:
        return await OAuthClient(Upstream(http), settings).probe()


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
    """List API clients: names, permissions, created and revoked times. Never keys."""
    settings = settings_or_exit()
    clients = with_database(settings, lambda db: ClientService(db).list())
    typer.echo(f"{'NAME':<24} {'PERMISSIONS':<56} {'CREATED':<25} REVOKED")
    for client in clients:
        revoked = client.revoked_at.isoformat(timespec="seconds") if client.revoked_at else "-"
        typer.echo(
            f"{client.name:<24} {client.permissions:<56} "
            f"{client.created_at.isoformat(timespec='seconds'):<25} {revoked}"
        )


@clients_app.command("revoke")
def clients_revoke(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Revoke an API client's key."""
    settings = settings_or_exit()
    client = with_database(settings, lambda db: ClientService(db).revoke(name))
    typer.echo(f"revoked API client {client.name}")


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
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction.")] = 200,
) -> None:
    """Re-seal every stored secret under the primary (first) key; safe while serving."""
    settings = settings_or_exit()
    if settings.encryption_keys is None:
        raise fail([f"{env_name('encryption_keys')}: required"])
    try:
        keyring = keyring_from_settings(settings)
    except ConfigurationError as error:
        raise fail(error.problems) from None
    try:
        report = with_database(
            settings, lambda db: KeyRotation(db, keyring, batch_size=batch_size).run()
        )
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


@accounts_app.command("health")
def accounts_health(
    status: Annotated[
        str | None, typer.Option(help="Only accounts with this status (active, revoked, …).")
    ] = None,
    reason: Annotated[
        StatusReason | None, typer.Option(help="Only accounts with this status_reason.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Accounts listed.")] = 50,
) -> None:
    """Accounts by status and reason, grants ending soon, and the accounts needing attention."""
    settings = settings_or_exit()
    notice = timedelta(seconds=settings.expiring_notice_seconds)
    report = with_database(
        settings,
        lambda db: health_report(db, status=status, reason=reason, limit=limit, notice=notice),
    )
    for line in health_lines(report):
        typer.echo(line)


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    amount = (
        f"{span / 86_400:.0f}d" if span >= 86_400
        else f"{span / 3600:.0f}h" if span >= 3600
        else f"{span / 60:.0f}m"
    )  # fmt: skip
    stamp = moment.strftime("%m-%d %H:%M")
    return f"{stamp} (in {amount})" if seconds > 0 else f"{stamp} ({amount} ago)"


def health_lines(report: HealthReport) -> list[str]:
    """The report as an operator reads it: a summary, counts by reason, then the accounts."""
    statuses = ", ".join(
        f"{report.count(status)} {status}" for status in ("active", "revoked", "suspended")
    )
    hours = report.notice.total_seconds() / 3600
    ending = report.ending_within_notice
    lines = [
        f"{report.total} accounts: {statuses}; {ending} grant{'' if ending == 1 else 's'} "
        f"end{'s' if ending == 1 else ''} within {hours:g}h (times in UTC)",
        "",
        f"{'STATUS':<10} {'REASON':<30} COUNT",
    ]
    for (status, reason), count in sorted(
        report.by_status_and_reason.items(), key=lambda item: (item[0][0], item[0][1] or "")
    ):
        lines.append(f"{status:<10} {reason or '-':<30} {count}")
    lines += [
        "",
        f"{'ACCOUNT':<28} {'STATUS':<10} {'REASON':<30} {'SINCE':<22} {'GRANT ENDS':<22} "
        "LAST REFRESH",
    ]
    for account in report.accounts:
        who = (account.email or account.subject)[:28]
        lines.append(
            f"{who:<28} {account.status:<10} {account.status_reason or '-':<30} "
            f"{_when(account.status_changed_at, report.at):<22} "
            f"{_when(account.grant_expires_at, report.at):<22} "
            f"{_when(account.last_refreshed_at, report.at)}"
        )
    if not report.accounts:
        lines.append("(none)")
    return lines


# --------------------------------------------------------------------------- risc


def _risc_call(
    settings: Settings,
    service_account_file: Path | None,
    call: Callable[[RiscStreamApi], Awaitable[T]],
) -> T:
    path = service_account_file or settings.risc_service_account_file
    if path is None:
        raise fail(
            [
                f"{env_name('risc_service_account_file')}: required (or --service-account-file): "
                "a service account key with the RISC Configuration Admin role"
            ]
        )
    try:
        account = ServiceAccount.from_file(path)
    except ServiceAccountFileError as error:
        raise fail([f"{env_name('risc_service_account_file')}: {error}"]) from None

    async def run() -> T:
        async with build_http_client(settings) as http:
            return await call(RiscStreamApi(Upstream(http), settings.risc_api_base, account))

    try:
        return asyncio.run(run())
    except ServiceAccountFileError as error:
        raise fail([f"{env_name('risc_service_account_file')}: {error}"]) from None
    except RiscApiError as error:
        raise fail([f"the RISC API refused: HTTP {error.status}: {error.message}"], 1) from None
    except TransientError as error:
        raise fail(
            [f"the RISC API at {settings.risc_api_base} did not answer ({error.reason})"], 1
        ) from None


ServiceAccountOption = Annotated[
    Path | None,
    typer.Option(help="Service account key file (default TOKEN_BROKER_RISC_SERVICE_ACCOUNT_FILE)."),
]


@risc_app.command("register")
def risc_register(
    url: Annotated[
        str | None,
        typer.Option(help="The receiver's public URL (default: /v1/risc beside the redirect URI)."),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option(help="An event type URI to receive; repeat (default: all Google documents)."),
    ] = None,
    service_account_file: ServiceAccountOption = None,
) -> None:
    """Register the broker's receiver for Google's security events (stream:update)."""
    settings = settings_or_exit()
    receiver = url or settings.effective_risc_receiver_url
    if receiver is None:
        raise fail([f"--url: required ({env_name('redirect_uri')} is not set either)"])
    unknown = [uri for uri in event or [] if uri not in EVENT_TYPES]
    if unknown:
        raise fail([f"--event: not an event type the broker acts on: {' '.join(unknown)}"])
    requested = list(event or DOCUMENTED_EVENT_TYPES)
    answer = _risc_call(settings, service_account_file, lambda api: api.update(receiver, requested))
    typer.echo(f"registered {receiver} for {len(requested)} event types")
    for uri in answer.get("events_delivered", requested):
        typer.echo(f"  {uri}")


@risc_app.command("status")
def risc_status(service_account_file: ServiceAccountOption = None) -> None:
    """Where Google sends security events, whether it does, and which."""
    settings = settings_or_exit()

    async def both(api: RiscStreamApi) -> tuple[dict[str, object], dict[str, object]]:
        return await api.configuration(), await api.status()

    configuration, status = _risc_call(settings, service_account_file, both)
    delivery = configuration.get("delivery")
    url = delivery.get("url") if isinstance(delivery, dict) else None
    typer.echo(f"receiver  {url or '-'}")
    typer.echo(f"status    {status.get('status', '-')}")
    requested = configuration.get("events_requested")
    delivered = configuration.get("events_delivered")
    typer.echo("events")
    for uri in requested if isinstance(requested, list) else []:
        mark = "" if not isinstance(delivered, list) or uri in delivered else "  (not delivered)"
        typer.echo(f"  {uri}{mark}")


@risc_app.command("verify")
def risc_verify(
    state: Annotated[
        str | None, typer.Option(help="A string to find in the broker's log (default: a time).")
    ] = None,
    service_account_file: ServiceAccountOption = None,
) -> None:
    """Ask Google for a verification event; the broker logs its state when it arrives."""
    settings = settings_or_exit()
    text = state or f"token-broker verify {datetime.now(UTC).isoformat(timespec='seconds')}"
    _risc_call(settings, service_account_file, lambda api: api.verify(text))
    typer.echo(f"verification requested (state {text!r}); the broker logs it when it arrives")


def main() -> None:
    app(prog_name="token-broker")
