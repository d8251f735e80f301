"""The client-side token cache: a token is reused while it has `min_ttl` seconds left,
and for a request naming scopes only while it holds each of them.

Expiry is counted on this process's monotonic clock from the moment the request
was sent, so neither a slow answer nor a wrong wall clock makes a token look
fresher than it is; a token is never served past its expiry, whatever `min_ttl`.
A token lacking a scope asked for is left to the broker, which answers with a token
whose grant has it (after a scope upgrade) or with `ScopeNotGranted` and its link.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from token_broker_client._models import AccessToken
from token_broker_client._scopes import missing


class TokenCache:
    """Access tokens by account, least recently used dropped first; safe across threads."""

    def __init__(
        self, max_accounts: int = 1024, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_accounts < 1:
            raise ValueError("max_accounts must be at least 1")
        self.max_accounts = max_accounts
        self.clock = clock
        self._entries: OrderedDict[str, tuple[AccessToken, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, account: str, min_ttl: float, scopes: Sequence[str] = ()) -> AccessToken | None:
        """The cached token if it has at least `min_ttl` (and more than 0) seconds left and
        holds every scope of `scopes` (compared as Google does: `email` is `userinfo.email`)."""
        with self._lock:
            entry = self._entries.get(account)
            if entry is None:
                return None
            token, deadline = entry
            remaining = deadline - self.clock()
            if remaining <= 0 or remaining < min_ttl:
                if remaining <= 0:
                    del self._entries[account]
                return None
            if scopes and missing(scopes, token.scopes):
                return None  # still good for what it holds: kept
            self._entries.move_to_end(account)
        return dataclasses.replace(token, expires_in=int(remaining))

    def put(self, account: str, token: AccessToken, *, requested_at: float) -> None:
        """Remember `token`, answered to a request sent at `requested_at` (this clock)."""
        with self._lock:
            self._entries[account] = (token, requested_at + token.expires_in)
            self._entries.move_to_end(account)
            while len(self._entries) > self.max_accounts:
                self._entries.popitem(last=False)

    def forget(self, account: str) -> None:
        with self._lock:
            self._entries.pop(account, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
