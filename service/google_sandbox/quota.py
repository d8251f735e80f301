"""Gmail's per-user limits, as the sandbox enforces them: quota units and concurrent requests.

Google's usage-limits page (https://developers.google.com/gmail/api/reference/quota)
prices each method in quota units (`messages.list` 5, `messages.get` 5,
`history.list` 2, `getProfile` 1) and limits each user of a project to a number
of units a minute (15,000 for older projects, 6,000 for projects created since
May 2026; older versions of the page said 250 a second, "moving average (allows
short bursts)"). Its batching guide (https://developers.google.com/gmail/api/guides/batch)
says a batch of n calls counts as n requests against the limit. Its error guide
(https://developers.google.com/gmail/api/guides/handle-errors) describes the
answers: 403 `userRateLimitExceeded` (older) or 429 `rateLimitExceeded` when the
rate is exceeded, and 429 "Too many concurrent requests for user" past a
per-user concurrency limit that Google does not publish. Bodies below are the
ones Gmail sends (as reported in googleapis/google-api-dotnet-client#1982 and
amd/gaia#2716 for the concurrency answer).

The sandbox models the rate as a token bucket per user (rate = units a minute /
60 each second, holding at most `burst_units`), and concurrency as the calls in
progress for the user, where a batch counts as its number of parts (Google runs
them in parallel). Both are off until configured (`PUT /_sandbox/quota`, or the
`--gmail-quota-*` flags of `python -m google_sandbox`), so tests run fast. The
concurrency limit is an assumption: reports show a batch of 100 tripping it and
batches of 25 to 50 passing, so the suggested value is 64.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# Quota units per method (Google's usage-limits page), by the sandbox's endpoint names.
UNIT_COSTS = {
    "gmail.messages.list": 5,
    "gmail.messages.get": 5,
    "gmail.history.list": 2,
    "gmail.getProfile": 1,
    # Not in the excerpts of Google's table at hand; as public quota tables list them.
    "gmail.watch": 100,
    "gmail.stop": 50,
}
CONCURRENCY_MESSAGE = "Too many concurrent requests for user."
RATE_MESSAGE_429 = (
    "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' of "
    "service 'gmail.googleapis.com' for consumer 'project_number:1000000000000'."
)


@dataclass
class QuotaSettings:
    units_per_minute: int | None = None  # None: the rate is not enforced
    burst_units: int | None = None  # None: a tenth of a minute's units
    concurrent_limit: int | None = None  # None: concurrency is not limited
    exceeded_status: Literal[429, 403] = 429


def rate_limited_body(status: int) -> dict[str, Any]:
    """Gmail's answer to a user over the rate: 429 (current) or 403 userRateLimitExceeded."""
    if status == 403:
        message = "User Rate Limit Exceeded"
        detail = {"message": message, "domain": "usageLimits", "reason": "userRateLimitExceeded"}
        return {"error": {"code": 403, "message": message, "errors": [detail],
                          "status": "PERMISSION_DENIED"}}  # fmt: skip
    detail = {"message": RATE_MESSAGE_429, "domain": "global", "reason": "rateLimitExceeded"}
    return {"error": {"code": 429, "message": RATE_MESSAGE_429, "errors": [detail],
                      "status": "RESOURCE_EXHAUSTED"}}  # fmt: skip


def concurrency_body() -> dict[str, Any]:
    detail = {"message": CONCURRENCY_MESSAGE, "domain": "global", "reason": "rateLimitExceeded"}
    return {"error": {"code": 429, "message": CONCURRENCY_MESSAGE, "errors": [detail],
                      "status": "RESOURCE_EXHAUSTED"}}  # fmt: skip


class GmailQuota:
    """Per-user buckets, calls in progress, units spent and refusals."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.settings = QuotaSettings()
        self._buckets: dict[str, tuple[float, float]] = {}
        self.in_flight: Counter[str] = Counter()
        self.spent: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # "rate", "concurrency"
        self.peak_in_flight: Counter[str] = Counter()

    @property
    def enforced(self) -> bool:
        return (
            self.settings.units_per_minute is not None or self.settings.concurrent_limit is not None
        )

    def configure(self, settings: QuotaSettings) -> None:
        self.settings = settings
        self._buckets.clear()

    def reset(self) -> None:
        self.configure(QuotaSettings())
        self.in_flight.clear()
        self.spent.clear()
        self.refused.clear()
        self.peak_in_flight.clear()

    @property
    def burst(self) -> float:
        per_minute = self.settings.units_per_minute or 0
        return float(self.settings.burst_units or max(1, per_minute // 10))

    def charge(self, user: str, cost: int) -> bool:
        """Spend `cost` units of `user`'s bucket; False (nothing spent) if it holds fewer."""
        per_minute = self.settings.units_per_minute
        if per_minute is None:
            self.spent[user] += cost
            return True
        now = self.clock()
        tokens, last = self._buckets.get(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * per_minute / 60)
        if tokens < cost:
            self._buckets[user] = (tokens, now)
            self.refused["rate"] += 1
            return False
        self._buckets[user] = (tokens - cost, now)
        self.spent[user] += cost
        return True

    def enter(self, user: str, weight: int) -> int:
        """Start `weight` calls for `user`: how many fit under the concurrency limit."""
        limit = self.settings.concurrent_limit
        admitted = weight if limit is None else max(0, min(weight, limit - self.in_flight[user]))
        if admitted < weight:
            self.refused["concurrency"] += weight - admitted
        self.in_flight[user] += admitted
        self.peak_in_flight[user] = max(self.peak_in_flight[user], self.in_flight[user])
        return admitted

    def leave(self, user: str, weight: int) -> None:
        self.in_flight[user] -= weight
        if self.in_flight[user] <= 0:
            del self.in_flight[user]

    def report(self) -> dict[str, Any]:
        return {
            "units_per_minute": self.settings.units_per_minute,
            "burst_units": self.burst if self.settings.units_per_minute else None,
            "concurrent_limit": self.settings.concurrent_limit,
            "exceeded_status": self.settings.exceeded_status,
            "spent": dict(self.spent),
            "rate_limited": self.refused["rate"],
            "concurrency_limited": self.refused["concurrency"],
            "peak_in_flight": dict(self.peak_in_flight),
        }
