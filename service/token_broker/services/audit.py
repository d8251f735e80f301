"""Audit events: who did what to which account, with which outcome. Never secrets.

State changes (account connected, revoked, deleted) are written in the same
transaction as the change, so they are never lost. High-volume events (tokens
issued, listings) go through `AuditBuffer`, which writes them in batches: the hot
path pays for an append, and a crash loses at most one flush interval of them.
Tokens issued, the highest-volume event, are counted instead: one row per client,
account, source (cache hit, refreshed, ...) and flush interval, with the count and
the first request's id.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.kit.background import Background, every
from token_broker.kit.clock import utcnow
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
    KEY_ROTATION = "key_rotation"
    CLIENT_CREATED = "client_created"
    CLIENT_REVOKED = "client_revoked"


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


class AuditBuffer:
    """Batches audit events and writes them every `interval` seconds in one transaction."""

    def __init__(
        self,
        database: Database,
        *,
        interval: float = 1.0,
        max_pending: int = 100_000,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.interval = interval
        self._pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self._counted: dict[tuple[str, str | None, str | None], list[Any]] = {}
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
        """One more occurrence of a frequent, identical event (written once per interval)."""
        key = (action.value + ":" + source, client_id, account_id)
        seen = self._counted.get(key)
        if seen is not None:
            seen[0] += 1
        elif len(self._counted) < (self._pending.maxlen or 0):
            self._counted[key] = [1, utcnow(), current_request_id()]
        elif self.on_drop is not None:
            self.on_drop()

    def _drain_counts(self) -> None:
        flushed_at = utcnow().isoformat()
        for (name, client_id, account_id), (count, first_at, request_id) in self._counted.items():
            action, _, source = name.partition(":")
            self._pending.append(
                {
                    "at": first_at,
                    "action": action,
                    "outcome": "ok",
                    "client_id": client_id,
                    "account_id": account_id,
                    "request_id": request_id,
                    "detail": {"source": source, "count": count, "until": flushed_at},
                }
            )
        self._counted.clear()

    async def flush(self) -> int:
        self._drain_counts()
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
        await self.flush()
