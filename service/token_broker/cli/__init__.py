"""`token-broker` (also `python -m token_broker`): serve, dev, sandbox, migrate, check, clients,
keys, watches, accounts, risc.

One module per group of commands; each registers on the command in `cli/app.py`.
Dev mode and the sandbox are imported only by their own commands: `serve` never
loads the fake Google into a production process.
"""

from __future__ import annotations

from token_broker.cli import accounts, clients, database, keys, risc, serving, watches
from token_broker.cli.app import app

__all__ = ["accounts", "clients", "database", "keys", "main", "risc", "serving", "watches"]


def main() -> None:
    app(prog_name="token-broker")
