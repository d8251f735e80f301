"""The connect flow's leftovers, removed in the background: used and expired states, and
authorizations past their retention.

A state matters from its authorization's start until its callback consumes it or it
expires; after that it is dead weight (a replayed callback finds nothing either way).
Every replica sweeps every tenth of TOKEN_BROKER_STATE_TTL_SECONDS (a minute by
default), in batches, so the table holds at most the states started within one
lifetime plus one sweep, whatever the traffic, and no request pays for the cleanup.
Deleting is idempotent, so replicas need not agree on who sweeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from token_broker.kit.background import Background, every
from token_broker.kit.clock import utcnow
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.repositories import AuthorizationRepository, OAuthStateRepository

log = logging.getLogger("token_broker.state_sweep")

BATCH = 5000


@dataclass(frozen=True)
class Swept:
    states: int
    authorizations: int


def sweep_interval(settings: Settings) -> float:
    return min(60.0, settings.state_ttl_seconds / 10)


class StateSweep:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.retention = timedelta(days=settings.authorization_retention_days)
        self.interval = sweep_interval(settings)
        self._sweeper = Background("state-sweep")

    async def sweep(self) -> Swept:
        now = utcnow()
        states = authorizations = 0
        while True:
            async with self.database.transaction() as session:
                deleted = await OAuthStateRepository(session).purge_finished(now, limit=BATCH)
            states += deleted
            if deleted < BATCH:
                break
        async with self.database.transaction() as session:
            authorizations = await AuthorizationRepository(session).purge_created_before(
                now - self.retention
            )
        if states or authorizations:
            log.info(
                "swept %d used or expired states, %d old authorizations", states, authorizations
            )
        return Swept(states, authorizations)

    def start(self) -> None:
        self._sweeper.start(every(self.interval, self._sweep_or_log))

    async def stop(self) -> None:
        await self._sweeper.stop()

    async def _sweep_or_log(self) -> None:
        try:
            await self.sweep()
        except Exception:
            log.warning("state sweep failed; next in %.0fs", self.interval, exc_info=True)
