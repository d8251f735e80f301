"""`risc`: Google's Cross-Account Protection stream to the broker's receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from token_broker.app import build_http_client
from token_broker.cli.app import risc_app
from token_broker.cli.common import T, fail, settings_or_exit
from token_broker.google.risc import DOCUMENTED_EVENT_TYPES, EVENT_TYPES
from token_broker.google.risc_api import (
    RiscApiError,
    RiscStreamApi,
    ServiceAccount,
    ServiceAccountFileError,
)
from token_broker.google.transport import Upstream
from token_broker.kit.retry import TransientError
from token_broker.settings import Settings, env_name

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
