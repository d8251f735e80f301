"""The `token-broker` command and its groups; each command module registers on them."""

from __future__ import annotations

import typer

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
watches_app = typer.Typer(help="Gmail watches (push notifications).", no_args_is_help=True)
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(watches_app, name="watches")
app.add_typer(accounts_app, name="accounts")
app.add_typer(risc_app, name="risc")
