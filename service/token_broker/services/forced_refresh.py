"""At most one forced refresh per account per interval (a few seconds, configurable).

`force_refresh=true` asks the provider for a new token although a cached one would
do. Unbounded, one `tokens:read` client could spend the broker's OAuth quota at
Google on a single account. So a forced request made within `interval` seconds of
the account's last *forced* refresh gets the current token instead: callers inside
the interval get the token the last forced refresh minted (or a newer one).

Only forced refreshes start the interval: a caller that was just handed a token by
an ordinary refresh or a connect, and finds Google refusing it (a grant revoked a
moment ago), forces a real refresh at once and learns the grant is dead. The time of
the last forced refresh is stored on the account's row (`forced_refresh_at`), which
the refresh re-reads before calling the provider, so a forced refresh on another
replica inside the interval satisfies the request too: one forced refresh per
account per interval across replicas. A forced request answered with a token minted
before it started was throttled; it is counted and audited as `force_throttled`.
"""

from __future__ import annotations

from dataclasses import dataclass

from token_broker.services.token_cache import CachedToken


@dataclass(frozen=True)
class ForcedRefreshes:
    interval: float

    def window_start(self, started: float) -> float:
        """A forced refresh at or after this moment answers a request started at `started`."""
        return started - self.interval

    def satisfies(self, token: CachedToken, started: float) -> bool:
        """Whether `token` answers a forced request started at `started` without a refresh:
        minted after it began, or the account was force-refreshed within the interval."""
        if token.minted_at >= started:
            return True
        return token.forced_at is not None and token.forced_at >= self.window_start(started)

    def recent(self, cached: CachedToken | None, started: float) -> CachedToken | None:
        """The cached token, if a forced refresh within the interval leaves it standing."""
        if cached is not None and self.satisfies(cached, started):
            return cached
        return None

    @staticmethod
    def throttled(token: CachedToken, started: float) -> bool:
        """Whether a forced request that started at `started` got an older token."""
        return token.minted_at < started
