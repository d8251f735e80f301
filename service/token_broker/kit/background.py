"""Long-running tasks of the app's components, started in the lifespan, cancelled at its end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class Background:
    """One named task; `stop` cancels it and waits until it has finished."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.create_task(work, name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def every(seconds: float, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` every `seconds`, forever (the step handles its own failures)."""
    while True:
        await asyncio.sleep(seconds)
        await step()
