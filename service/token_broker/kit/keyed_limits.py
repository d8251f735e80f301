"""At most `limit` units of work in progress per key (a weighted semaphore per key).

Waiters are served in arrival order, so a large request is not starved by small
ones. A weight above the limit is held as the whole limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Hashable


class _Limit:
    def __init__(self) -> None:
        self.used = 0
        self.waiters: deque[tuple[int, asyncio.Future[None]]] = deque()


class KeyedLimits:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._limits: dict[Hashable, _Limit] = {}

    def in_progress(self, key: Hashable) -> int:
        entry = self._limits.get(key)
        return entry.used if entry else 0

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable, weight: int = 1) -> AsyncIterator[None]:
        weight = max(1, min(weight, self.limit))
        entry = self._limits.setdefault(key, _Limit())
        if entry.waiters or entry.used + weight > self.limit:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry.waiters.append((weight, future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(key, entry, weight)  # granted just as we were cancelled
                else:
                    entry.waiters.remove((weight, future))
                    self._wake(entry)
                raise
        else:
            entry.used += weight
        try:
            yield
        finally:
            self._release(key, entry, weight)

    def _release(self, key: Hashable, entry: _Limit, weight: int) -> None:
        entry.used -= weight
        self._wake(entry)
        if entry.used == 0 and not entry.waiters and self._limits.get(key) is entry:
            del self._limits[key]

    def _wake(self, entry: _Limit) -> None:
        while entry.waiters and entry.used + entry.waiters[0][0] <= self.limit:
            weight, future = entry.waiters.popleft()
            entry.used += weight
            future.set_result(None)
