"""Single flight: concurrent callers asking for the same key share one call.

The call runs as its own task, so a caller that goes away (a client disconnecting)
does not cancel it for the others still waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self, name: str) -> None:
        self.name = name
        self._running: dict[K, asyncio.Task[V]] = {}

    def join(self, key: K, call: Callable[[], Awaitable[V]]) -> tuple[Awaitable[V], bool]:
        """The result to await, and whether another caller had already started it."""
        task = self._running.get(key)
        if task is not None:
            return asyncio.shield(task), True
        task = asyncio.ensure_future(call())
        self._running[key] = task
        task.add_done_callback(lambda done: self._landed(key, done))
        return asyncio.shield(task), False

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        result, _ = self.join(key, call)
        return await result

    def running(self, key: K) -> bool:
        return key in self._running

    def _landed(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters re-raise it; nobody else needs to
