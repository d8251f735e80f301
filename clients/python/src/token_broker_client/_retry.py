"""When to try a request again: 429 and 503 answers and unreachable brokers, bounded.

A `Retry-After` (header or body) is honoured: the client never asks sooner. Waits
without one back off exponentially with jitter. Retries stop after `attempts`
tries, or when the next wait would take the total past `budget_seconds`; the last
error is then raised as it is, its `retry_after` intact for the caller to use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from token_broker_client._errors import BrokerError, BrokerProblem, BrokerUnreachable

RETRYABLE_STATUSES = frozenset({429, 503})
# Answered before the broker did any work: safe to repeat even a request that is not
# idempotent (a code exchange).
REFUSED_BEFORE_WORK = frozenset({"rate_limited", "shutting_down"})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries. `RetryPolicy(attempts=1)` switches retries off."""

    attempts: int = 3
    budget_seconds: float = 30.0
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.budget_seconds < 0 or self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("budget_seconds and the backoffs must not be negative")

    def wait_before_retry(
        self, attempt: int, error: BrokerError, *, waited: float, idempotent: bool
    ) -> float | None:
        """Seconds to wait before try `attempt + 1`, or None to give up and raise `error`."""
        if attempt >= self.attempts or not _retryable(error, idempotent=idempotent):
            return None
        retry_after = error.retry_after if isinstance(error, BrokerProblem) else None
        if retry_after is not None:
            wait = retry_after + random.uniform(0, 0.1)  # noqa: S311 (jitter, not secrecy)
        else:
            ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
            wait = random.uniform(ceiling / 2, ceiling)  # noqa: S311
        if waited + wait > self.budget_seconds:
            return None
        return wait


def _retryable(error: BrokerError, *, idempotent: bool) -> bool:
    if isinstance(error, BrokerUnreachable):
        return idempotent or not error.request_sent
    if isinstance(error, BrokerProblem):
        if error.status not in RETRYABLE_STATUSES:
            return False
        return idempotent or error.problem_code in REFUSED_BEFORE_WORK
    return False
