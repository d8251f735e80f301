"""Each Google user's Gmail quota, spent by every Gmail call the broker makes for them.

Gmail limits each user of a project to a number of quota units a minute and to a
few concurrent requests (google/gmail_details.py cites the pages). Listing pages,
detail batches and any other Gmail call for one user draw from one bucket in
Gmail's units (a batch costs the sum of its parts), so concurrent requests for the
same user share the user's rate instead of each believing it has all of it.

- Without `TOKEN_BROKER_REDIS_URL` the bucket lives in this process.
- With it, every replica reserves from one bucket in Redis (an atomic script).
  If Redis stops answering, this replica carries on with a local bucket at
  `TOKEN_BROKER_GMAIL_QUOTA_FALLBACK_FRACTION` of the rate (so N replicas, each on
  its own, stay within the quota when the fraction is 1/N), logs it once, shows it
  in `/metrics` and in `/readyz`, and tries Redis again every few seconds. Never an
  outage.

Calls in progress are capped the same way: at most `TOKEN_BROKER_GMAIL_USER_CONCURRENCY`
Gmail calls in progress for one user (a batch counting as its parts), in this
process and, with Redis, across every replica (leases in Redis). While Redis is
away the cap is this replica's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from token_broker.google.gmail_details import QUOTA_UNITS, GmailMethod
from token_broker.kit.keyed_limits import KeyedLimits
from token_broker.kit.token_bucket import TokenBuckets
from token_broker.observability.metrics import Metrics
from token_broker.settings import Settings
from token_broker.store.redis_buckets import RedisBuckets, SharedBucketsUnavailable

log = logging.getLogger("token_broker.gmail_quota")

REDIS_RETRY_SECONDS = 5.0
LEASE_POLL_SECONDS = 0.02  # how often a call waiting for a place in Redis asks again


class QuotaWaitTooLong(Exception):
    """The user's quota is spoken for longer than the caller may wait."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        super().__init__(f"quota free in {wait:.1f}s")


class GmailQuota:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        shared: RedisBuckets | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = settings.gmail_quota_units_per_minute / 60
        self.burst = float(settings.gmail_quota_burst_units)
        self.fraction = settings.gmail_quota_fallback_fraction
        self.metrics = metrics
        self.shared = shared
        self.clock = clock
        self.sleep = sleep
        self.local = TokenBuckets(self.rate, self.burst, clock=clock)
        self.fallback = TokenBuckets(
            self.rate * self.fraction, max(1.0, self.burst * self.fraction), clock=clock
        )
        self.calls = KeyedLimits(settings.gmail_user_concurrency)
        self.concurrency = settings.gmail_user_concurrency
        self._redis_down_since: float | None = None
        self._retry_redis_at = 0.0
        metrics.gmail_quota_fallback.set(0)

    @property
    def degraded(self) -> bool:
        return self._redis_down_since is not None

    def status(self) -> str:
        """For /readyz: "ok", or what is degraded (which does not make the replica unready)."""
        if not self.degraded:
            return "ok"
        return (
            f"degraded: Redis unreachable, Gmail quota kept by this replica alone at "
            f"{self.fraction:.0%} of the rate"
        )

    @contextlib.asynccontextmanager
    async def call(
        self,
        user: str,
        method: GmailMethod,
        calls: int = 1,
        *,
        max_wait: float | None = None,
    ) -> AsyncIterator[None]:
        """Around one Gmail request for `user` (a batch: `calls` parts): a place among the
        user's calls in progress first, then the quota, then the request.

        In that order, a request is sent as soon as its units are due, never held back
        after them; requests held back and then sent together would exceed the rate.
        """
        async with self.in_progress(user, calls):
            await self.spend(user, method, calls, max_wait=max_wait)
            yield

    async def spend(
        self,
        user: str,
        method: GmailMethod,
        calls: int = 1,
        *,
        max_wait: float | None = None,
    ) -> float:
        """Reserve `calls` calls of `method` for `user` and wait until they are due.

        Returns the seconds waited; raises QuotaWaitTooLong (spending nothing) when
        the wait would exceed `max_wait`.
        """
        units = QUOTA_UNITS[method] * calls
        granted, wait = await self._reserve(user, units, max_wait)
        if not granted:
            raise QuotaWaitTooLong(wait)
        self.metrics.gmail_quota_units.labels(method).inc(units)
        if wait > 0:
            self.metrics.gmail_quota_wait.labels(method).inc(wait)
            await self.sleep(wait)
        return wait

    @contextlib.asynccontextmanager
    async def in_progress(self, user: str, calls: int = 1) -> AsyncIterator[None]:
        """Hold `calls` of the user's places for calls in progress (waits for them)."""
        weight = max(1, min(calls, self.concurrency))
        async with self.calls.hold(user, weight):
            lease = await self._shared_lease(user, weight)
            try:
                yield
            finally:
                if lease is not None:
                    await self._give_back(user, lease)

    async def _shared_lease(self, user: str, weight: int) -> str | None:
        """A place among the user's calls in progress on every replica; None without Redis."""
        while self.shared is not None and not (
            self.degraded and self.clock() < self._retry_redis_at
        ):
            try:
                lease = await self.shared.take_lease(user, weight, limit=self.concurrency)
            except SharedBucketsUnavailable as error:
                self._redis_failed(str(error))
                return None
            if lease is not None:
                return lease
            await asyncio.sleep(LEASE_POLL_SECONDS)
        return None

    async def _give_back(self, user: str, lease: str) -> None:
        assert self.shared is not None
        try:
            await self.shared.give_back(user, lease)
        except SharedBucketsUnavailable as error:
            self._redis_failed(str(error))  # the lease lapses by itself

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    async def _reserve(self, user: str, units: float, max_wait: float | None) -> tuple[bool, float]:
        if self.shared is None:
            return self.local.reserve(user, units, max_wait)
        if self.degraded and self.clock() < self._retry_redis_at:
            return self.fallback.reserve(user, units, max_wait)
        try:
            reservation = await self.shared.reserve(
                user, units, rate=self.rate, burst=self.burst, max_wait=max_wait
            )
        except SharedBucketsUnavailable as error:
            self._redis_failed(str(error))
            return self.fallback.reserve(user, units, max_wait)
        if self.degraded:
            log.warning(
                "Redis answers again: the Gmail quota is shared by every replica once more "
                "(it was kept locally for %.0fs)",
                self.clock() - (self._redis_down_since or self.clock()),
            )
            self._redis_down_since = None
            self.metrics.gmail_quota_fallback.set(0)
        return reservation

    def _redis_failed(self, reason: str) -> None:
        self.metrics.gmail_quota_redis_errors.inc()
        self._retry_redis_at = self.clock() + REDIS_RETRY_SECONDS
        if self._redis_down_since is None:
            self._redis_down_since = self.clock()
            self.metrics.gmail_quota_fallback.set(1)
            log.warning(
                "Redis unreachable (%s): keeping the Gmail quota in this replica at %.0f%% of "
                "the rate until it answers again",
                reason,
                self.fraction * 100,
            )
