"""`token_broker_accounts{status}`, counted on a timer rather than on every scrape.

Counting the accounts table on each scrape makes `/metrics` cost grow with the table
(and multiplies by replicas and scrapers). Each replica counts once at start, then
every TOKEN_BROKER_METRICS_ACCOUNTS_INTERVAL_SECONDS; a scrape only renders what the
last count found. While the database is away the gauge keeps its last value.
"""

from __future__ import annotations

import logging

from token_broker.kit.background import Background, every
from token_broker.observability.metrics import Metrics
from token_broker.services.accounts import AccountService
from token_broker.store.models import AccountStatus

log = logging.getLogger("token_broker.metrics")


class AccountGauges:
    def __init__(self, accounts: AccountService, metrics: Metrics, *, interval: float) -> None:
        self.accounts = accounts
        self.metrics = metrics
        self.interval = interval
        self._counter = Background("account-gauges")

    async def refresh(self) -> None:
        try:
            counts = await self.accounts.count_by_status()
        except Exception as error:
            log.debug("account counts unavailable for metrics (%s)", type(error).__name__)
            return
        for status in AccountStatus:
            self.metrics.accounts.labels(status.value).set(counts.get(status.value, 0))

    def start(self) -> None:
        self._counter.start(self._count_now_and_then())

    async def stop(self) -> None:
        await self._counter.stop()

    async def _count_now_and_then(self) -> None:
        await self.refresh()
        await every(self.interval, self.refresh)
