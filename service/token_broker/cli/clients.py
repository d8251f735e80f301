"""`clients`: the API clients that call the broker, and their keys."""

from __future__ import annotations

from typing import Annotated

import typer

from token_broker.cli.app import clients_app
from token_broker.cli.common import settings_or_exit, with_database
from token_broker.kit.clock import rfc3339, utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService


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
