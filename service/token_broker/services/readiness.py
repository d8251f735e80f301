"""Readiness: can this replica serve? Database up, schema at head, keyring works, the stored
secrets it samples open with it, not draining.

The keyring check also reports what the keyring failed to open while serving: stored
secrets sealed with a key this replica lacks make it unready (another replica, given
the key, serves them); values that did not authenticate under a key it has (altered,
or copied from another row) are reported as degraded for a while, without taking the
replica out.
"""

from __future__ import annotations

import time

from token_broker.kit.drain import Drain
from token_broker.services.gmail_quota import GmailQuota
from token_broker.services.secret_sample import sample_secrets
from token_broker.store.database import Database
from token_broker.store.migrations import schema_revision
from token_broker.store.sealing import Keyring, SecretColumn

_PROBE = SecretColumn("readiness", "probe")
# How long a value that did not authenticate keeps the keyring check degraded.
REJECTED_REPORTED_SECONDS = 900


class Readiness:
    def __init__(
        self, *, database: Database, keyring: Keyring, drain: Drain, head_revision: str,
        gmail_quota: GmailQuota,
    ) -> None:  # fmt: skip
        self.database = database
        self.gmail_quota = gmail_quota
        self.keyring = keyring
        self.drain = drain
        self.head_revision = head_revision

    async def checks(self) -> dict[str, str]:
        """Each check's name and "ok", or what is wrong with it ("degraded: ..." serves on)."""
        checks: dict[str, str] = {}
        if self.drain.draining:
            checks["shutdown"] = "draining: this instance is shutting down"
        try:
            revision = await schema_revision(self.database)
            checks["database"] = "ok"
            if revision == self.head_revision:
                checks["schema"] = "ok"
            else:
                checks["schema"] = (
                    f"at {revision or 'no revision'}, expected {self.head_revision}; "
                    "run `token-broker migrate`"
                )
        except Exception as error:
            checks["database"] = f"unreachable ({type(error).__name__})"
            checks["schema"] = "unknown"
        if checks["schema"] == "ok":
            try:
                sample = await sample_secrets(self.database, self.keyring)
                checks["secrets"] = sample.problem() or "ok"
            except Exception as error:
                checks["secrets"] = f"not sampled ({type(error).__name__})"
        checks["keyring"] = self._keyring()
        checks["gmail_quota"] = self.gmail_quota.status()
        return checks

    def _keyring(self) -> str:
        try:
            sealed = self.keyring.seal("probe", column=_PROBE, row="probe")
            self.keyring.open(sealed, column=_PROBE, row="probe")
        except Exception as error:
            return f"failed ({type(error).__name__})"
        failures = self.keyring.failures
        if failures.missing:
            named = ", ".join(
                f"{kid} ({_values(count)} could not be opened)"
                for kid, count in sorted(failures.missing.items())
            )
            return (
                f"missing key {named}: stored secrets are sealed with it; add it to "
                "TOKEN_BROKER_ENCRYPTION_KEYS on this replica"
            )
        now = time.monotonic()
        recent = sorted(
            (kid, count, now - at)
            for kid, (count, at) in failures.rejected.items()
            if now - at < REJECTED_REPORTED_SECONDS
        )
        if recent:
            named = ", ".join(
                f"{_values(count)} under key {kid} (last {age:.0f} s ago)"
                for kid, count, age in recent
            )
            return f"degraded: stored values did not authenticate: {named}; altered or copied"
        return "ok"


def _values(count: int) -> str:
    return f"{count} stored value" + ("" if count == 1 else "s")


def failing(checks: dict[str, str]) -> list[str]:
    """The checks that make the replica unready (a degraded one does not)."""
    return [
        name for name, value in checks.items() if value != "ok" and not value.startswith("degraded")
    ]
