"""`token-broker keys rotate`: re-seal every stored secret under the primary key.

Runs in small batches, each its own transaction with its rows locked, so replicas
keep serving (a refresh holding a row's lock delays its batch, never corrupts it).
Only values sealed under another key are rewritten, so an interrupted run resumes
where it stopped when started again, and a finished run reports zero.
Every replica must already hold the new primary key (first) and the old ones: the
run refuses while a live replica's heartbeat (services/replicas.py) lacks it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.services.audit import Action, write_audit
from token_broker.services.replicas import lacking_key, live_replicas
from token_broker.store.database import Database
from token_broker.store.models import Account, OAuthState, Replica
from token_broker.store.repositories import AccountRepository, OAuthStateRepository
from token_broker.store.sealing import Keyring, SecretColumn

Row = TypeVar("Row")


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
    def __init__(self, database: Database, keyring: Keyring, *, batch_size: int = 200) -> None:
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
        async def reseal(session: AsyncSession, account: Account) -> None:
            refresh = self._reseal(account.refresh_token, Account.REFRESH_TOKEN, account.id, report)
            access = self._reseal(account.access_token, Account.ACCESS_TOKEN, account.id, report)
            if (refresh, access) != (account.refresh_token, account.access_token):
                account.refresh_token, account.access_token = refresh, access
                await AccountRepository(session).save(account)

        await self._in_batches(
            lambda session, after: AccountRepository(session).batch_after(after, self.batch_size),
            reseal,
            lambda account: account.id,
            report,
        )

    async def _states(self, report: RotationReport) -> None:
        async def reseal(session: AsyncSession, state: OAuthState) -> None:
            verifier = self._reseal(
                state.code_verifier, OAuthState.CODE_VERIFIER, state.state_hash, report
            )
            if verifier is not None and verifier != state.code_verifier:
                state.code_verifier = verifier
                await OAuthStateRepository(session).save(state)

        await self._in_batches(
            lambda session, after: OAuthStateRepository(session).batch_after(
                after, self.batch_size
            ),
            reseal,
            lambda state: state.state_hash,
            report,
        )

    async def _in_batches(
        self,
        fetch: Callable[[AsyncSession, str], Awaitable[Sequence[Row]]],
        reseal: Callable[[AsyncSession, Row], Awaitable[None]],
        key: Callable[[Row], str],
        report: RotationReport,
    ) -> None:
        """Each batch in its own transaction, its rows locked; resumes after the last key."""
        after = ""
        while True:
            async with self.database.transaction() as session:
                batch = await fetch(session, after)
                for row in batch:
                    report.examined += 1
                    await reseal(session, row)
            if len(batch) < self.batch_size:
                return
            after = key(batch[-1])
