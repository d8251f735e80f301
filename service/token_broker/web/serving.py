"""How the broker is served: uvicorn, with every client connection bounded in time and number.

uvicorn closes a kept-alive connection that stays idle (5 s), but waits forever for a
connection that sends nothing, or half a request head, or half a body; a few hundred
of those used to hold every file descriptor and take `/healthz` down. Here each
connection must complete its request head within TOKEN_BROKER_REQUEST_HEAD_TIMEOUT_SECONDS
of opening (or of its previous answer) and its body within
TOKEN_BROKER_REQUEST_BODY_TIMEOUT_SECONDS of its head, or it is closed. And the
process keeps its connections below its file-descriptor limit (raised to the hard
limit at start): when one more would pass TOKEN_BROKER_MAX_CONNECTIONS, or the
descriptors left after a reserve for the database pool and upstream calls, the
connection that has waited longest for a request head is closed to make room. A
connection whose request is in flight is never closed for room, so a refresh storm
of a thousand callers is served, and a health check, which sends its head at once,
always gets in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from token_broker.settings import Settings

log = logging.getLogger("token_broker.serving")

# uvicorn's own: how long a kept-alive connection may sit idle between requests. A
# proxy that keeps connections to the broker must give up on them sooner.
KEEP_ALIVE_SECONDS = 5


# How often the deadlines are checked, as a fraction of the shortest one: a connection
# is closed within a quarter of its deadline after it passes.
SWEEPS_PER_DEADLINE = 4
MAX_SWEEP_SECONDS = 1.0


@dataclass
class ConnectionGuard:
    """Deadlines and the connection budget of one server process.

    Deadlines are checked by one sweep a fraction of a second apart, not by a timer per
    request: a kept-alive connection's requests then cost two dictionary updates each,
    where arming and cancelling timers was a tenth of the cached-token path.
    """

    head_timeout: float
    body_timeout: float
    max_connections: int
    # Connections waiting for a request head, and those reading a body, each with the
    # loop time it started; the longest waiting first (entries move to the end).
    waiting: OrderedDict[GuardedProtocol, float] = field(default_factory=OrderedDict)
    reading: OrderedDict[GuardedProtocol, float] = field(default_factory=OrderedDict)
    evicted: int = 0
    _sweeps: asyncio.TimerHandle | None = None

    @property
    def sweep_interval(self) -> float:
        shortest = min(self.head_timeout, self.body_timeout)
        return min(MAX_SWEEP_SECONDS, shortest / SWEEPS_PER_DEADLINE)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the sweep on the serving loop (once)."""
        if self._sweeps is None:
            self._sweeps = loop.call_later(self.sweep_interval, self._sweep, loop)

    def make_room(self, open_connections: int) -> None:
        """Close the connections that have waited longest for a head, down to the budget."""
        while open_connections > self.max_connections and self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            oldest.close("the connection budget is spent")
            self.evicted += 1
            open_connections -= 1

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        _close_overdue(
            self.waiting, now - self.head_timeout, "its request head was not sent in time"
        )
        _close_overdue(
            self.reading, now - self.body_timeout, "its request body was not sent in time"
        )
        self._sweeps = loop.call_later(self.sweep_interval, self._sweep, loop)


def _close_overdue(since: OrderedDict[GuardedProtocol, float], cutoff: float, reason: str) -> None:
    while since:
        connection, started = next(iter(since.items()))
        if started > cutoff:
            return  # the rest started later
        connection.close(reason)  # removes it from `since`


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request head and body."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.watch(self.loop)
        self._await_head()
        self.guard.make_room(len(self.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self.guard.waiting.pop(self, None)
        self.guard.reading[self] = self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.guard.reading.pop(self, None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        next_request_ready = bool(self.pipeline)
        super().on_response_complete()
        if not next_request_ready and not self.transport.is_closing():
            self._await_head()

    def close(self, reason: str) -> None:
        self._forget()
        if not self.transport.is_closing():
            log.debug("closing a client connection: %s", reason)
            self.transport.close()

    def _await_head(self) -> None:
        self.guard.reading.pop(self, None)
        self.guard.waiting.pop(self, None)  # to the end: the newest waiter
        self.guard.waiting[self] = self.loop.time()

    def _forget(self) -> None:
        self.guard.waiting.pop(self, None)
        self.guard.reading.pop(self, None)


def connection_budget(settings: Settings) -> int:
    """TOKEN_BROKER_MAX_CONNECTIONS, within the file descriptors this process may open.

    The soft limit is raised to the hard one first; a reserve stays free for the
    database pool, upstream calls, Redis, the change feed and log files.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    needed = settings.db_pool_size + settings.db_max_overflow + settings.http_max_connections + 32
    reserve = min(soft // 4, needed)
    budget = min(settings.max_connections, soft - reserve)
    if budget < settings.max_connections:
        log.info(
            "serving at most %d connections (file descriptor limit %d, %d kept for the "
            "database and upstream calls)",
            budget,
            soft,
            reserve,
        )
    return max(1, budget)


def guarded_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options that bound every connection (for `uvicorn.run` or `uvicorn.Config`)."""
    guard = ConnectionGuard(
        head_timeout=settings.request_head_timeout_seconds,
        body_timeout=settings.request_body_timeout_seconds,
        max_connections=connection_budget(settings),
    )
    return {
        "http": functools.partial(GuardedProtocol, guard=guard),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    }


def serve(app: Any, settings: Settings, **options: Any) -> None:
    """`uvicorn.run` with the guarded protocol; `options` are uvicorn's own."""
    uvicorn.run(app, **guarded_options(settings), **options)
