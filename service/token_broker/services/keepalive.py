"""Keep-alive refresh: Google drops refresh tokens unused for six months.

Every `TOKEN_BROKER_KEEPALIVE_INTERVAL_SECONDS` each replica tries to become the
sweep's leader (a Postgres advisory lock held for the sweep; the lock dies with its
connection if the replica does). The leader refreshes accounts whose refresh token
has not been used for `TOKEN_BROKER_KEEPALIVE_AFTER_DAYS`, each under the same lease
and single flight as request-time refreshes, so nobody refreshes the same account
twice. Up to half of TOKEN_BROKER_REFRESH_CONCURRENCY accounts are refreshed at once
(the other half stays free for callers). Dead grants are marked revoked (and
notified); the sweep is audited per account and summarised in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from token_broker.errors import (
    AccountNotFound,
    AccountSuspended,
    ProviderRejectedClient,
    ReauthorizationRequired,
    UpstreamUnavailable,
)
from token_broker.kit.background import Background, every
from token_broker.kit.clock import utcnow
from token_broker.services.tokens import Source, TokenService
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.leadership import leadership
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.keepalive")

LEADER_LOCK = 0x746F6B656E  # "token": the advisory lock key for the sweep


@dataclass
class SweepReport:
    leader: bool
    outcomes: Counter[str] = field(default_factory=Counter)


class KeepAlive:
    def __init__(self, database: Database, tokens: TokenService, settings: Settings) -> None:
        self.database = database
        self.tokens = tokens
        self.after = timedelta(days=settings.keepalive_after_days)
        self.interval = settings.keepalive_interval_seconds
        self.batch = settings.keepalive_batch
        self.concurrency = max(1, settings.refresh_concurrency // 2)
        self._sweeper = Background("keep-alive")

    async def sweep(self) -> SweepReport:
        async with leadership(self.database, LEADER_LOCK) as leader:
            if not leader:
                return SweepReport(leader=False)
            report = await self._refresh_stale()
        if report.outcomes:
            log.info("keep-alive sweep: %s", dict(report.outcomes))
        return report

    async def _refresh_stale(self) -> SweepReport:
        report = SweepReport(leader=True)
        cutoff = utcnow() - self.after
        async with self.database.transaction() as session:
            stale = iter(await AccountRepository(session).stale_ids(cutoff, self.batch))
        stop = asyncio.Event()

        async def refresh_some() -> None:
            for account_id in stale:  # shared: each account is taken by one worker
                if stop.is_set():
                    return
                outcome = await self._refresh_one(account_id, cutoff.timestamp())
                report.outcomes[outcome] += 1
                if outcome == "rejected_client" and not stop.is_set():
                    stop.set()
                    log.error("keep-alive stopped: the provider rejects the broker's client")

        await asyncio.gather(*(refresh_some() for _ in range(self.concurrency)))
        return report

    async def _refresh_one(self, account_id: str, unused_since: float) -> str:
        try:
            source = await self.tokens.keep_alive(account_id, unused_since)
        except ReauthorizationRequired:
            return "revoked"
        except AccountSuspended:
            return "suspended"
        except UpstreamUnavailable:
            return "unavailable"
        except AccountNotFound:
            return "deleted"
        except ProviderRejectedClient:
            return "rejected_client"
        return "refreshed" if source is Source.REFRESHED else "already_fresh"

    def start(self) -> None:
        self._sweeper.start(every(self.interval, self._sweep_or_log))

    async def stop(self) -> None:
        await self._sweeper.stop()

    async def _sweep_or_log(self) -> None:
        try:
            await self.sweep()
        except Exception:
            log.warning("keep-alive sweep failed; next in %ss", self.interval, exc_info=True)
