"""Audit events: who did what to which account, with which outcome. Never secrets.

State changes (account connected, revoked, deleted) are written in the same
transaction as the change, so they are never lost. High-volume events (tokens
issued, listings) go through `AuditBuffer`, which writes them in batches: the hot
path pays for an append, and a crash loses at most one flush interval of them.

Tokens issued, the highest-volume event, cost at most two rows per client, account
and window (TOKEN_BROKER_TOKEN_AUDIT_WINDOW_SECONDS, aligned to the clock, per
replica), however many tokens: the first token a client gets for an account in a
window is a row at once (its time, request id and source: within a flush interval,
like any buffered event); when the window ends, one more row counts all of them
(`count`, by `sources`) if there was more than one. A crash loses that count for its
window, never the first row beyond a flush interval. More than `max_counted` pairs
in one window close it early, so memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.kit.background import Background, every
from token_broker.kit.clock import rfc3339, utcnow
from token_broker.observability.request_ids import current_request_id
from token_broker.store.database import Database
from token_broker.store.repositories import AuditRepository

log = logging.getLogger("token_broker.audit")


class Action(StrEnum):
    AUTHORIZATION_STARTED = "authorization_started"
    ACCOUNT_CONNECTED = "account_connected"
    TOKEN_ISSUED = "token_issued"
    REFRESH = "refresh"
    ACCOUNT_REVOKED = "account_revoked"
    ACCOUNT_DELETED = "account_deleted"
    ACCOUNT_SUSPENDED = "account_suspended"
    ACCOUNT_UNSUSPENDED = "account_unsuspended"
    SECURITY_EVENT = "security_event"
    MESSAGES_LISTED = "messages_listed"
    CHANGES_LISTED = "changes_listed"
    KEY_ROTATION = "key_rotation"
    CLIENT_CREATED = "client_created"
    CLIENT_REVOKED = "client_revoked"
    CLIENT_KEY_ROTATED = "client_key_rotated"
    CLIENT_DELETED = "client_deleted"


def _event(
    action: Action,
    outcome: str,
    *,
    client_id: str | None = None,
    account_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "action": action.value,
        "outcome": outcome,
        "client_id": client_id,
        "account_id": account_id,
        "request_id": current_request_id(),
        "detail": detail,
    }


async def write_audit(
    session: AsyncSession,
    action: Action,
    outcome: str,
    *,
    client_id: str | None = None,
    account_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record an event in the caller's transaction: it commits (or not) with the change."""
    event = _event(action, outcome, client_id=client_id, account_id=account_id, detail=detail)
    await AuditRepository(session).add_many([event])


@dataclass
class _Issued:
    """Tokens one client got for one account in the current window."""

    count: int = 0
    sources: Counter[str] = field(default_factory=Counter)


class AuditBuffer:
    """Batches audit events and writes them every `interval` seconds in one transaction."""

    def __init__(
        self,
        database: Database,
        *,
        interval: float = 1.0,
        window_seconds: float = 3600.0,
        max_pending: int = 100_000,
        max_counted: int = 250_000,
        on_drop: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.interval = interval
        self.window_seconds = window_seconds
        self.max_counted = max_counted
        self.clock = clock
        self._pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self._counted: dict[tuple[str, str | None, str | None], _Issued] = {}
        self._window_start = self._window_end = 0.0
        self._new_window(clock())
        self._flusher = Background("audit-flush")
        self.on_drop = on_drop

    def record(
        self,
        action: Action,
        outcome: str,
        *,
        client_id: str | None = None,
        account_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if len(self._pending) == self._pending.maxlen and self.on_drop is not None:
            self.on_drop()
        self._pending.append(
            _event(action, outcome, client_id=client_id, account_id=account_id, detail=detail)
        )

    def count(
        self, action: Action, *, client_id: str | None, account_id: str | None, source: str
    ) -> None:
        """One more occurrence of a frequent event: a row for the first in the window, a
        count when the window closes."""
        key = (action.value, client_id, account_id)
        issued = self._counted.get(key)
        if issued is None:
            if len(self._counted) >= self.max_counted:
                self._close_window(self.clock())
            issued = self._counted[key] = _Issued()
            self.record(
                action, "ok", client_id=client_id, account_id=account_id,
                detail={"source": source,
                        "first_in_window": self._window_detail(self._window_end)},
            )  # fmt: skip
        issued.count += 1
        issued.sources[source] += 1

    def _new_window(self, now: float) -> None:
        if now >= self._window_end:  # the next window on the clock
            self._window_start = math.floor(now / self.window_seconds) * self.window_seconds
            self._window_end = self._window_start + self.window_seconds
        else:  # closed early: the rest of this one
            self._window_start = now

    def _window_detail(self, end: float) -> dict[str, str]:
        return {"start": _iso(self._window_start), "end": _iso(end)}

    def _close_window(self, now: float) -> None:
        """Count rows for the pairs with more than their first row; a new window begins."""
        end = min(now, self._window_end)
        window = self._window_detail(end)
        for (action, client_id, account_id), issued in self._counted.items():
            if issued.count > 1:
                self._pending.append({
                    "at": datetime.fromtimestamp(end, UTC), "action": action, "outcome": "ok",
                    "client_id": client_id, "account_id": account_id, "request_id": None,
                    "detail": {"count": issued.count, "sources": dict(issued.sources),
                               "window": window},
                })  # fmt: skip
        self._counted.clear()
        self._new_window(now)

    async def flush(self, *, closing: bool = False) -> int:
        now = self.clock()
        if closing or now >= self._window_end:
            self._close_window(now)
        if not self._pending:
            return 0
        batch = list(self._pending)
        self._pending.clear()
        try:
            async with self.database.transaction() as session:
                await AuditRepository(session).add_many(batch)
        except Exception:
            # Keep the events for the next attempt (the deque bounds memory if the
            # database stays away); log without the events themselves.
            self._pending.extendleft(reversed(batch))
            log.warning("audit flush failed; %d events kept for retry", len(batch), exc_info=True)
            return 0
        return len(batch)

    def start(self) -> None:
        self._flusher.start(every(self.interval, self.flush))

    async def stop(self) -> None:
        await self._flusher.stop()
        await self.flush(closing=True)


def _iso(timestamp: float) -> str:
    return rfc3339(datetime.fromtimestamp(timestamp, UTC))
