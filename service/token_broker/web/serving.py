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


@dataclass
class ConnectionGuard:
    """Deadlines and the connection budget of one server process."""

    head_timeout: float
    body_timeout: float
    max_connections: int
    # Connections waiting for a request head, the longest waiting first.
    waiting: OrderedDict[GuardedProtocol, None] = field(default_factory=OrderedDict)
    evicted: int = 0

    def make_room(self, open_connections: int) -> None:
        """Close the connections that have waited longest for a head, down to the budget."""
        while open_connections > self.max_connections and self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            oldest.close("the connection budget is spent")
            self.evicted += 1
            open_connections -= 1


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request head and body."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        self.guard.make_room(len(self.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        self._deadline = self.loop.call_later(
            self.guard.body_timeout, self.close, "its request body was not sent in time"
        )
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        next_request_ready = bool(self.pipeline)
        super().on_response_complete()
        if not next_request_ready and not self.transport.is_closing():
            self._await_head()

    def close(self, reason: str) -> None:
        self._stop_waiting()
        if not self.transport.is_closing():
            log.debug("closing a client connection: %s", reason)
            self.transport.close()

    def _await_head(self) -> None:
        self._cancel_deadline()
        self.guard.waiting[self] = None
        self._deadline = self.loop.call_later(
            self.guard.head_timeout, self.close, "its request head was not sent in time"
        )

    def _stop_waiting(self) -> None:
        self._cancel_deadline()
        self.guard.waiting.pop(self, None)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


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
