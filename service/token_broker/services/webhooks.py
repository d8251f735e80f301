"""Account notifications: a signed POST to the operator's webhook when an account is
connected (each successful consent, with the authorization id), turns revoked, or
active again; about its grant's health (services/grant_health.py): expiring soon,
recovered, suspended or unsuspended by Google, asked to sign in again, and the security
events Google reports that change no status; and when its mailbox changed
(`mailbox.changed`, from Gmail's push or the fallback check: `services/mailbox_notices.py`).

Events are written to the `webhook_deliveries` outbox in the same transaction as the
change, then a background dispatcher on every replica leases due rows one at a time
and delivers them, retrying with exponential backoff. Delivery is at least once:
receivers deduplicate by event id. The request that noticed the change never waits.

Signature (verify it before trusting a body):

    Token-Broker-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Recompute the HMAC over the raw body bytes, compare in constant time, and refuse
timestamps more than five minutes from now.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Tracer
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.kit.background import Background
from token_broker.kit.clock import rfc3339, utcnow
from token_broker.observability.metrics import Metrics
from token_broker.observability.tracing import fail, span
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.models import Account, WebhookDelivery
from token_broker.store.repositories import WebhookRepository

log = logging.getLogger("token_broker.webhooks")

SIGNATURE_HEADER = "Token-Broker-Signature"
EventType = Literal[
    "account.connected",
    "account.revoked",
    "account.reactivated",
    "account.recovered",
    "account.expiring",
    "account.suspended",
    "account.unsuspended",
    "account.signin_required",
    "account.credential_change_required",
    "account.sessions_revoked",
    "mailbox.changed",
]
# Events caused by a connect carry its authorization id (null for a code exchange).
CONNECT_EVENTS = frozenset({"account.connected", "account.reactivated", "account.recovered"})
LEASE = timedelta(seconds=60)
# Trace contexts of queued events, for their delivery spans (bounded: oldest forgotten).
MAX_REMEMBERED_ORIGINS = 10_000


def _iso(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment is not None else None


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: int = 300) -> bool:
    """The documented recipe, as code (receivers in Python may use it as is)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Webhooks:
    def __init__(
        self,
        database: Database,
        http: httpx.AsyncClient,
        settings: Settings,
        metrics: Metrics,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self.database = database
        self.http = http
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        self.max_attempts = settings.webhook_max_attempts
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._dispatcher = Background("webhook-dispatcher")
        self.tracer = tracer
        self._origins: OrderedDict[str, dict[str, str]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.url is not None

    async def account_changed(
        self,
        session: AsyncSession,
        event_type: EventType,
        account: Account,
        reason: str | None,
        *,
        authorization_id: str | None = None,
        **extra: Any,
    ) -> None:
        """Queue a notification inside the caller's transaction (no-op when disabled).

        `extra` adds event-specific fields (previous_reason, grant_expires_at, detail).
        """
        fields: dict[str, Any] = {"reason": reason, **extra}
        if event_type in CONNECT_EVENTS:
            # The connect that caused it: null for a code exchange (POST /v1/oauth/exchange).
            fields["authorization"] = authorization_id
        await self._queue(session, event_type, account, fields)

    async def mailbox_changed(
        self, session: AsyncSession, account: Account, *, history_id: str, trigger: str
    ) -> None:
        """Queue `mailbox.changed`: the mailbox changed up to Gmail history id `history_id`."""
        await self._queue(
            session, "mailbox.changed", account, {"history_id": history_id, "trigger": trigger}
        )

    async def _queue(
        self, session: AsyncSession, event_type: EventType, account: Account, extra: dict[str, Any]
    ) -> None:
        if not self.enabled:
            return
        now = utcnow()
        event_id = str(uuid.uuid4())
        payload: dict[str, Any] = {
            "id": event_id,
            "type": event_type,
            "occurred_at": rfc3339(now),
            "account": {
                "id": account.id,
                "subject": account.subject,
                "email": account.email,
                "status": account.status,
                "status_reason": account.status_reason,
                "status_changed_at": _iso(account.status_changed_at),
                "grant_expires_at": _iso(account.grant_expires_at),
            },
            **extra,
        }
        if self.tracer is not None:
            self._remember_origin(event_id)
        await WebhookRepository(session).add(
            WebhookDelivery(
                id=event_id,
                event_type=event_type,
                payload=payload,
                created_at=now,
                next_attempt_at=now,
            )
        )

    def wake(self) -> None:
        self._wake.set()

    def _remember_origin(self, event_id: str) -> None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            self._origins[event_id] = carrier
            while len(self._origins) > MAX_REMEMBERED_ORIGINS:
                self._origins.popitem(last=False)

    async def deliver_due(self) -> int:
        """Deliver (or reschedule) every due notification; returns how many were sent."""
        delivered = 0
        while True:
            now = utcnow()
            async with self.database.transaction() as session:
                delivery = await WebhookRepository(session).lease_next(now, now + LEASE)
            if delivery is None:
                return delivered
            error = await self._post(delivery)
            settled = utcnow()
            async with self.database.transaction() as session:
                repository = WebhookRepository(session)
                if error is None:
                    delivered += 1
                    self.metrics.webhook_deliveries.labels("delivered").inc()
                    await repository.settle(delivery.id, delivered_at=settled)
                elif delivery.attempts >= self.max_attempts:
                    self.metrics.webhook_deliveries.labels("failed").inc()
                    log.error(
                        "webhook delivery gave up after %d attempts (%s)",
                        delivery.attempts, error, extra={"event_id": delivery.id},
                    )  # fmt: skip
                    await repository.settle(delivery.id, failed_at=settled, last_error=error)
                else:
                    self.metrics.webhook_deliveries.labels("retry").inc()
                    backoff = timedelta(seconds=min(3600, 2 ** (delivery.attempts - 1)))
                    await repository.settle(
                        delivery.id, next_attempt_at=settled + backoff, last_error=error
                    )

    async def _post(self, delivery: WebhookDelivery) -> str | None:
        assert self.url is not None
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, int(time.time()), body),
            "Token-Broker-Event-Id": delivery.id,
        }
        origin = self._origins.pop(delivery.id, None)
        with span(
            self.tracer,
            "POST webhook",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "server.address": httpx.URL(self.url).host,
                "token_broker.webhook.event_type": delivery.event_type,
                "token_broker.webhook.attempt": delivery.attempts,
            },
            parent=propagate.extract(origin) if origin else None,
        ) as current:
            if current is not None:
                propagate.inject(headers)
            try:
                response = await self.http.post(
                    self.url, content=body, headers=headers, timeout=5.0
                )
            except httpx.HTTPError as error:
                if current is not None:
                    fail(current, type(error).__name__)
                return type(error).__name__
            if current is not None:
                current.set_attribute("http.response.status_code", response.status_code)
            if 200 <= response.status_code < 300:
                return None
            if current is not None:
                fail(current, str(response.status_code))
            return f"HTTP {response.status_code}"

    def start(self) -> None:
        if self.enabled:
            self._dispatcher.start(self._run())

    async def stop(self) -> None:
        await self._dispatcher.stop()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5)
            self._wake.clear()
            try:
                await self.deliver_due()
            except Exception:
                log.warning("webhook dispatch pass failed; will retry", exc_info=True)
