"""Can this keyring open what is stored? A sample of sealed secrets, opened for real.

A keyring that loads is not enough: after `keys rotate`, a replica still holding
only the old key loads its keyring fine, then fails every refresh. `/readyz` and
`check` open the secrets of the first accounts by id (a cheap read, and the rows a
rotation re-seals first) and name each key id they cannot open.

A value sealed with a key this replica lacks makes it unfit to serve (give it the
key). A value that does not authenticate under a key it has (altered, or copied from
another row) is one row's damage, not the replica's: it is reported as degraded, the
way `/readyz`'s keyring check reports such values met while serving.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from token_broker.store.database import Database
from token_broker.store.models import Account
from token_broker.store.repositories import AccountRepository
from token_broker.store.sealing import DecryptionError, Keyring, SecretColumn

SAMPLE_ACCOUNTS = 20


@dataclass
class SampleReport:
    opened: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # key id -> values it did not open
    reasons: dict[str, str] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)  # key ids this replica does not hold

    @property
    def sampled(self) -> int:
        return self.opened + sum(self.failed.values())

    def problem(self) -> str | None:
        """One line naming the key ids that failed (prefixed "degraded: " unless a key this
        replica lacks is among them), or None when everything opened."""
        if not self.failed:
            return None
        parts = [
            f"key {kid} ({self.reasons[kid]}; {count} of {self.sampled} sampled values)"
            for kid, count in sorted(self.failed.items())
        ]
        line = "cannot open secrets sealed with " + ", ".join(parts)
        return line if self.missing else f"degraded: {line}"


async def sample_secrets(
    database: Database, keyring: Keyring, *, accounts: int = SAMPLE_ACCOUNTS
) -> SampleReport:
    async with database.transaction() as session:
        rows = await AccountRepository(session).first_by_id(accounts)
    report = SampleReport()
    for account in rows:
        for column, value in (
            (Account.REFRESH_TOKEN, account.refresh_token),
            (Account.ACCESS_TOKEN, account.access_token),
        ):
            if value is None:
                continue
            try:
                keyring.open(value, column=column, row=account.id)
                report.opened += 1
            except DecryptionError:
                kid, reason = _why(value, column, keyring)
                report.failed[kid] += 1
                report.reasons[kid] = reason
                if kid != "?" and kid not in keyring.key_ids:
                    report.missing.add(kid)
    return report


def _why(value: str, column: SecretColumn, keyring: Keyring) -> tuple[str, str]:
    try:
        kid = Keyring.key_id_of(value, column)
    except DecryptionError:
        return "?", "not a sealed value"
    if kid in keyring.key_ids:
        return kid, f"does not authenticate under this replica's key {kid}"
    return kid, f"not in this replica's keyring, which holds {', '.join(keyring.key_ids)}"
