"""Gauges that count rows: `token_broker_accounts{status}` and, with Gmail push,
`token_broker_gmail_watches{state}`, counted on a timer rather than on every scrape.

Counting tables on each scrape makes `/metrics` cost grow with them (and multiplies by
replicas and scrapers). Each replica counts once at start, then every
TOKEN_BROKER_METRICS_ACCOUNTS_INTERVAL_SECONDS; a scrape only renders what the last
count found. While the database is away the gauges keep their last values.
"""

from __future__ import annotations

import logging

from token_broker.kit.background import Background, every
from token_broker.observability.metrics import Metrics
from token_broker.services.accounts import AccountService
from token_broker.services.mailbox_watches import WatchKeeper
from token_broker.store.models import AccountStatus

log = logging.getLogger("token_broker.metrics")


class AccountGauges:
    def __init__(
        self,
        accounts: AccountService,
        metrics: Metrics,
        *,
        interval: float,
        watches: WatchKeeper | None = None,
    ) -> None:
        self.accounts = accounts
        self.watches = watches
        self.metrics = metrics
        self.interval = interval
        self._counter = Background("account-gauges")

    async def refresh(self) -> None:
        try:
            counts = await self.accounts.count_by_status()
            watches = await self.watches.counts() if self.watches is not None else None
        except Exception as error:
            log.debug("row counts unavailable for metrics (%s)", type(error).__name__)
            return
        for status in AccountStatus:
            self.metrics.accounts.labels(status.value).set(counts.get(status.value, 0))
        if watches is not None:
            for state in ("active", "pending", "stopped", "expiring"):
                self.metrics.gmail_watches.labels(state).set(watches.get(state, 0))

    def start(self) -> None:
        self._counter.start(self._count_now_and_then())

    async def stop(self) -> None:
        await self._counter.stop()

    async def _count_now_and_then(self) -> None:
        await self.refresh()
        await every(self.interval, self.refresh)
