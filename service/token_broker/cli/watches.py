"""`watches`: Gmail watches, for push notifications."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from token_broker.app import Components
from token_broker.cli.app import watches_app
from token_broker.cli.common import fail, settings_or_exit, with_database, with_services
from token_broker.services.mailbox_watches import Renewal, watch_listing
from token_broker.settings import env_name


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
