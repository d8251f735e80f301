"""Telling every replica that an account or an API client changed, so caches drop it at once,
and that an account's refresh lease was released, so replicas waiting on it look again.

In-process subscribers are called directly. On Postgres the change is also sent
with NOTIFY inside the transaction that made it (so it is delivered only if that
transaction commits), and each replica LISTENs on a dedicated connection. A replica
whose listening connection drops forgets everything it cached, since it may have
missed notifications, then listens again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Literal

import asyncpg
from sqlalchemy.engine import make_url

from token_broker.kit.background import Background

log = logging.getLogger("token_broker.events")

CHANNEL = "token_broker_events"
Kind = Literal["account", "client", "lease"]
KINDS = ("account", "client", "lease")
Subscriber = Callable[[Kind, str | None], None]


def payload(kind: Kind, identifier: str) -> str:
    return f"{kind}:{identifier}"


class ChangeFeed:
    """Fans changes out to the caches of this process; listens to other replicas on Postgres."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._listener = Background("change-feed")

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def changed(self, kind: Kind, identifier: str | None) -> None:
        """Drop `identifier` (or, with None, everything of that kind) from local caches."""
        for subscriber in self._subscribers:
            subscriber(kind, identifier)

    def _on_notification(self, *args: Any) -> None:
        message = str(args[-1])
        kind, _, identifier = message.partition(":")
        if kind in KINDS and identifier:
            self.changed(kind, identifier)  # type: ignore[arg-type]

    def listen(self, database_url: str) -> None:
        self._listener.start(self._listen(database_url))

    async def stop(self) -> None:
        await self._listener.stop()

    async def _listen(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        delay = 0.5
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(dsn, timeout=10)
                await connection.add_listener(CHANNEL, self._on_notification)
                # Whatever changed while we were not listening is unknown: start clean.
                self.changed("account", None)
                self.changed("client", None)
                delay = 0.5
                closed = asyncio.Event()
                connection.add_termination_listener(lambda _c, closed=closed: closed.set())
                while not closed.is_set():
                    # A connection can die without a word (a dropped network path):
                    # probe it now and then so listening never silently stops.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), timeout=30)
                    if not closed.is_set():
                        await connection.execute("SELECT 1", timeout=5)
                log.warning("change feed connection closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("change feed unavailable (%s); retrying", type(error).__name__)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
