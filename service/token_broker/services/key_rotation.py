"""`token-broker keys rotate`: re-seal every stored secret under the primary key.

Runs in batches, each its own transaction with its rows locked and its changes
written in one statement, so replicas keep serving: a refresh locks a row only for
the milliseconds it takes to lease it or store its result, and stores only what it
changed (a rotated refresh token), so a batch re-sealing the same row meanwhile is
never undone with a stale value.
Only values sealed under another key are rewritten, so an interrupted run resumes
where it stopped when started again, and a finished run reports zero.
Every replica must already hold the new primary key (first) and the old ones: the
run refuses while a live replica's heartbeat (services/replicas.py) lacks it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.services.audit import Action, write_audit
from token_broker.services.replicas import lacking_key, live_replicas
from token_broker.store.database import Database
from token_broker.store.models import Account, OAuthState, Replica
from token_broker.store.repositories import AccountRepository, OAuthStateRepository
from token_broker.store.sealing import Keyring, SecretColumn

Row = TypeVar("Row", bound=tuple[Any, ...])


@dataclass
class RotationReport:
    primary: str
    examined: int = 0
    resealed: Counter[str] = field(default_factory=Counter)

    @property
    def total_resealed(self) -> int:
        return sum(self.resealed.values())


class ReplicasLackPrimaryKey(Exception):
    """Live replicas that could not open values sealed under the new primary key."""

    def __init__(self, primary: str, replicas: list[Replica]) -> None:
        self.primary = primary
        self.replicas = replicas
        super().__init__(f"{len(replicas)} live replicas lack key {primary}")


class KeyRotation:
    def __init__(self, database: Database, keyring: Keyring, *, batch_size: int = 1000) -> None:
        self.database = database
        self.keyring = keyring
        self.batch_size = batch_size

    async def run(self, *, force: bool = False) -> RotationReport:
        """Re-seal everything, after checking every live replica holds the primary key.

        `force` rotates anyway; the audit row then names the replicas left behind.
        """
        primary = self.keyring.primary_kid
        behind = lacking_key(await live_replicas(self.database), primary)
        if behind and not force:
            raise ReplicasLackPrimaryKey(primary, behind)
        report = RotationReport(primary=primary)
        await self._accounts(report)
        await self._states(report)
        detail: dict[str, object] = {"primary": primary, "resealed": dict(report.resealed)}
        if behind:
            detail["forced_past"] = [f"{replica.host}:{replica.pid}" for replica in behind]
        async with self.database.transaction() as session:
            await write_audit(session, Action.KEY_ROTATION, "ok", detail=detail)
        return report

    def _reseal(
        self, value: str | None, column: SecretColumn, row: str, report: RotationReport
    ) -> str | None:
        if value is None:
            return None
        resealed = self.keyring.reseal(value, column=column, row=row)
        if resealed is None:
            return value
        report.resealed[f"{column.table}.{column.column}"] += 1
        return resealed

    async def _accounts(self, report: RotationReport) -> None:
        def reseal(row: sa.Row[str, str | None, str | None]) -> dict[str, Any] | None:
            refresh = self._reseal(row.refresh_token, Account.REFRESH_TOKEN, row.id, report)
            access = self._reseal(row.access_token, Account.ACCESS_TOKEN, row.id, report)
            if (refresh, access) == (row.refresh_token, row.access_token):
                return None
            return {"row": row.id, "sealed_refresh": refresh, "sealed_access": access}

        await self._in_batches(
            lambda session, after: AccountRepository(session).sealed_after(after, self.batch_size),
            reseal,
            lambda session, changes: AccountRepository(session).store_sealed(changes),
            report,
        )

    async def _states(self, report: RotationReport) -> None:
        def reseal(row: sa.Row[str, str]) -> dict[str, Any] | None:
            verifier = self._reseal(
                row.code_verifier, OAuthState.CODE_VERIFIER, row.state_hash, report
            )
            if verifier == row.code_verifier:
                return None
            return {"row": row.state_hash, "sealed_verifier": verifier}

        await self._in_batches(
            lambda session, after: OAuthStateRepository(session).sealed_after(
                after, self.batch_size
            ),
            reseal,
            lambda session, changes: OAuthStateRepository(session).store_sealed(changes),
            report,
        )

    async def _in_batches(
        self,
        fetch: Callable[[AsyncSession, str], Awaitable[Sequence[Row]]],
        reseal: Callable[[Row], dict[str, Any] | None],
        store: Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[None]],
        report: RotationReport,
    ) -> None:
        """Each batch in its own transaction, its rows locked, its changes written in one
        statement; resumes after the last key (a row's first column)."""
        after = ""
        while True:
            async with self.database.transaction() as session:
                batch = await fetch(session, after)
                report.examined += len(batch)
                changes = [change for row in batch if (change := reseal(row)) is not None]
                await store(session, changes)
            if len(batch) < self.batch_size:
                return
            after = batch[-1][0]
