"""`serve`, `dev` and `sandbox`: the broker in production, in dev mode, and the stand-in
for Google on its own.

Dev mode and the sandbox are imported only by their own commands: `serve` never
loads the fake Google into a production process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from dotenv import dotenv_values

from token_broker.app import tracing_from_environment
from token_broker.cli.app import app
from token_broker.cli.common import fail, settings_or_exit
from token_broker.observability.logs import configure_logging
from token_broker.settings import ConfigurationError, env_name
from token_broker.store.database import is_postgres
from token_broker.store.sealing import keyring_from_settings
from token_broker.web.serving import serve as serve_guarded


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
