"""`keys`: the encryption keys that seal secrets at rest."""

from __future__ import annotations

from typing import Annotated

import typer

from token_broker.cli.app import keys_app
from token_broker.cli.common import fail, settings_or_exit, with_database
from token_broker.services.key_rotation import KeyRotation, ReplicasLackPrimaryKey
from token_broker.services.replicas import describe
from token_broker.settings import ConfigurationError, env_name
from token_broker.store.sealing import DecryptionError, Keyring, KeyringError, keyring_from_settings


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
