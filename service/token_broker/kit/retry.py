"""Bounded retries: exponential backoff with jitter, honouring Retry-After, within a budget.

Written here rather than taken from stamina or tenacity because the policy the broker
needs is budget-first: a wait that would end past the caller's budget is not taken
(the caller gets a problem with a Retry-After instead), and a provider's Retry-After
is a floor, never shortened. The sleep and clock are injectable, so tests assert the
exact waits without waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")


TransientKind = Literal["timeout", "connection_error", "server_error", "rate_limited", "malformed"]


class TransientError(Exception):
    """A failure worth retrying: timeout, connection error, 5xx, 429, rate-limit 403."""

    def __init__(
        self, reason: str, *, kind: TransientKind, retry_after: float | None = None
    ) -> None:
        self.reason = reason
        self.kind = kind
        self.retry_after = retry_after
        super().__init__(reason)

    def suggested_retry_after(self, default: float = 1.0) -> int:
        """Whole seconds for a caller's Retry-After: the provider's, else `default`."""
        return max(1, round(self.retry_after or default))


class RetriesExhausted(Exception):
    """Attempts or budget ran out; `retry_after` is when the caller may sensibly try again."""

    def __init__(self, last: TransientError, *, attempts: int, retry_after: int) -> None:
        self.last = last
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(f"{last.reason} after {attempts} attempts")


@dataclass(frozen=True)
class Backoff:
    attempts: int
    budget: float
    initial: float = 1.0
    maximum: float = 32.0
    jitter: float = 1.0

    def wait(self, failures: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after the `failures`-th consecutive failure."""
        exponential = min(self.maximum, self.initial * 2 ** (failures - 1))
        jittered: float = exponential + rng.uniform(0, self.jitter)
        return max(jittered, retry_after or 0.0)


async def retrying(
    operation: Callable[[], Awaitable[T]],
    policy: Backoff,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> T:
    """Run `operation`, retrying `TransientError` as `policy` allows."""
    rng = rng or random.Random()  # noqa: S311  (jitter, not secrecy)
    deadline = clock() + policy.budget
    failures = 0
    while True:
        try:
            return await operation()
        except TransientError as error:
            failures += 1
            delay = policy.wait(failures, error.retry_after, rng)
            if failures >= policy.attempts or clock() + delay > deadline:
                suggested = error.suggested_retry_after(policy.initial)
                raise RetriesExhausted(error, attempts=failures, retry_after=suggested) from error
            if on_retry is not None:
                on_retry(error, delay)
            await sleep(delay)
