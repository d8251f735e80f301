"""At most one forced refresh per account per interval (a few seconds, configurable).

`force_refresh=true` asks the provider for a new token although a cached one would
do. Unbounded, one `tokens:read` client could spend the broker's OAuth quota at
Google on a single account. So a forced request is satisfied by any token minted in
the last `interval` seconds: callers inside the interval get the token the last
forced refresh minted.

The rule needs nothing new from the refresh core, whose one rule is "a token minted
at or after the moment a request counts from satisfies it": a forced request counts
from `interval` seconds before it started. The refresh re-reads the account's row
before calling the provider, so a token another replica minted inside the interval
satisfies it too: one forced refresh per account per interval across replicas. A
forced request answered with a token minted before it started was throttled; it is
counted and audited as `force_throttled`.
"""

from __future__ import annotations

from dataclasses import dataclass

from token_broker.services.token_cache import CachedToken


@dataclass(frozen=True)
class ForcedRefreshes:
    interval: float

    def counts_from(self, started: float) -> float:
        """The moment from which a token satisfies a forced request that started at `started`."""
        return started - self.interval

    def recent(self, cached: CachedToken | None, started: float) -> CachedToken | None:
        """The cached token, if it was minted recently enough to answer a forced request."""
        if cached is not None and cached.minted_at >= self.counts_from(started):
            return cached
        return None

    @staticmethod
    def throttled(token: CachedToken, started: float) -> bool:
        """Whether a forced request that started at `started` got an older token."""
        return token.minted_at < started
