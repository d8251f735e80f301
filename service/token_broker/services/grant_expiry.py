"""Seeing a grant's end coming: `account.expiring` once per grant, and the health gauges.

A grant's end is known when the app is in testing status (7 days after consent, for
grants beyond the sign-in scopes) or when Google granted time-based access
(`refresh_token_expires_in`); `account_states.store_grant` records it as
`grant_expires_at`. Every TOKEN_BROKER_GRANT_HEALTH_INTERVAL_SECONDS each replica looks
for active accounts whose grant ends within TOKEN_BROKER_EXPIRING_NOTICE_SECONDS and
whose users were not told yet, and queues `account.expiring` for each. The notice is
claimed by one conditional UPDATE per account, so however many replicas look at once,
it is sent once per grant (a new consent starts a new grant and a new notice).

The same pass sets the gauges of accounts by status and reason, and of accounts whose
grant ends within a day: a scrape of /metrics never queries the database for them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from token_broker.kit.background import Background, every
from token_broker.kit.clock import utcnow
from token_broker.observability.metrics import Metrics
from token_broker.services.account_states import AccountStates
from token_broker.services.webhooks import Webhooks
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.grant_expiry")

BATCH = 500
GAUGE_HORIZON = timedelta(days=1)


class GrantExpiry:
    def __init__(
        self,
        database: Database,
        account_states: AccountStates,
        webhooks: Webhooks,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.database = database
        self.account_states = account_states
        self.webhooks = webhooks
        self.metrics = metrics
        self.notice = timedelta(seconds=settings.expiring_notice_seconds)
        self.interval = settings.grant_health_interval_seconds
        self._watcher = Background("grant-expiry")
        self._seen_reasons: set[tuple[str, str]] = set()

    async def sweep(self) -> int:
        """Queue `account.expiring` for grants ending within the notice; returns how many."""
        now = utcnow()
        noticed = 0
        async with self.database.transaction() as session:
            accounts = await AccountRepository(session).expiring(now + self.notice, BATCH)
            for account in accounts:
                if await self.account_states.expiring(session, account):
                    noticed += 1
        if noticed:
            self.webhooks.wake()
            log.info("grants ending within the notice: %d accounts told", noticed)
        await self.count()
        return noticed

    async def count(self) -> None:
        """The gauges: accounts by status and reason, and accounts expiring within a day."""
        async with self.database.transaction() as session:
            accounts = AccountRepository(session)
            by_reason = await accounts.count_by_status_and_reason()
            expiring = await accounts.count_expiring(utcnow() + GAUGE_HORIZON)
        current = {
            (status, reason or "none"): count for (status, reason), count in by_reason.items()
        }
        for labels in self._seen_reasons - current.keys():
            self.metrics.accounts_by_reason.labels(*labels).set(0)
        for labels, count in current.items():
            self.metrics.accounts_by_reason.labels(*labels).set(count)
        self._seen_reasons |= current.keys()
        self.metrics.accounts_expiring.set(expiring)

    def start(self) -> None:
        self._watcher.start(every(self.interval, self._sweep_or_log))

    async def stop(self) -> None:
        await self._watcher.stop()

    async def _sweep_or_log(self) -> None:
        try:
            await self.sweep()
        except Exception:
            log.warning("grant expiry pass failed; next in %ss", self.interval, exc_info=True)
