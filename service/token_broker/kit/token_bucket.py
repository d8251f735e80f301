"""Token buckets that reserve: a caller learns how long to wait for its tokens, then goes.

A reservation spends the tokens at once, even ahead of time (the bucket goes into
debt), and tells the caller how long to wait before its tokens would have been
there. Callers that wait that long never exceed the rate, take turns in the order
they asked, and nobody polls. A reservation that would wait longer than the
caller's `max_wait` is refused and spends nothing.

`reserve` answers (granted, wait): the seconds to wait when granted, or the wait
that was refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


def refill(tokens: float, elapsed: float, rate: float, burst: float) -> float:
    """The bucket's tokens after `elapsed` seconds at `rate` a second, at most `burst`."""
    return min(burst, tokens + max(0.0, elapsed) * rate)


def wait_for(tokens: float, cost: float, rate: float) -> float:
    """Seconds until a bucket holding `tokens` would hold `cost` (0 if it already does)."""
    return max(0.0, (cost - tokens) / rate)


class TokenBucket:
    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._last = clock()

    def reserve(self, cost: float, max_wait: float | None = None) -> tuple[bool, float]:
        """Spend `cost` tokens and wait the seconds returned; refused past `max_wait`."""
        now = self.clock()
        tokens = refill(self._tokens, now - self._last, self.rate, self.burst)
        wait = wait_for(tokens, cost, self.rate)
        self._last = now
        if max_wait is not None and wait > max_wait:
            self._tokens = tokens
            return False, wait
        self._tokens = tokens - cost
        return True, wait


class TokenBuckets:
    """One `TokenBucket` per key, all at the same rate and burst, at most `max_keys` kept."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def reserve(
        self, key: Hashable, cost: float, max_wait: float | None = None
    ) -> tuple[bool, float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                # Forgetting a bucket only forgives its debt and refills it: a short burst.
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, clock=self.clock)
        return bucket.reserve(cost, max_wait)
