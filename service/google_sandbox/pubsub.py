"""Cloud Pub/Sub as Gmail uses it: a topic, one push subscription, OIDC-signed push deliveries.

Facts (Gmail's push guide, https://developers.google.com/gmail/api/guides/push; Pub/Sub's
push and authentication guides, https://cloud.google.com/pubsub/docs/push and
https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions):

- `users.watch` names a topic `projects/<project>/topics/<name>` that Gmail may publish to;
  when it may not, 403 "Error sending test message to Cloud PubSub <topic> : User not
  authorized to perform this action." (reason `forbidden`, dacastro4/laravel-gmail#285).
  The answer is `{historyId, expiration}`, expiration in epoch milliseconds as a string
  (gmail.v1.json `WatchResponse`); the watch must be renewed "at least every 7 days"
  (daily recommended). `users.stop` turns delivery off and answers with no body.
- A notification's `message.data` is base64-encoded JSON `{"emailAddress", "historyId"}`;
  the history id arrives as a JSON number (`{'emailAddress': ..., 'historyId': 1710}`,
  googleworkspace/python-samples#200). "Each Gmail user being watched has a maximum
  notification rate of 1 event/sec. Any user notifications above that rate will be
  dropped"; notifications may also be delayed or lost.
- A push is `POST <endpoint>` with `{"message": {"data", "messageId", "message_id",
  "publishTime", "publish_time"}, "subscription": "projects/<p>/subscriptions/<s>"}`.
  102, 200, 201, 202 and 204 acknowledge it; anything else is retried.
- With authentication on, `Authorization: Bearer <JWT>`: an OpenID Connect token signed
  by Google's keys (RS256, `kid`), claims `aud` (the configured audience, "if not
  specified, the push endpoint URL"), `azp`, `email` (the subscription's service
  account), `email_verified`, `exp`, `iat`, `iss` (https://accounts.google.com), `sub`.
  "The tokens attached to requests sent to push endpoints may be up to an hour old": one
  token serves several deliveries, so the sandbox reuses each for `token_reuse_seconds`.

The sandbox signs with its own published keys (`keys.py`, `/oauth2/v3/certs` and
`/oauth2/v1/certs`) and its own issuer, as its ID tokens are. Delay, drop rate and the
push endpoint are set through `PUT /_sandbox/pubsub`; `POST /_sandbox/pubsub/deliveries`
sends one delivery with any token (expired, forged, for another audience) for tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from joserfc import jwt

from google_sandbox.history import HistoryRecord
from google_sandbox.keys import SigningKey, SigningKeys

PROJECT = "sandbox-project"
DEFAULT_TOPIC = f"projects/{PROJECT}/topics/gmail"
DEFAULT_SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/gmail-push"
DEFAULT_SERVICE_ACCOUNT = f"gmail-push@{PROJECT}.iam.gserviceaccount.com"
WATCH_LIFETIME_SECONDS = 7 * 24 * 3600
NOTIFICATION_INTERVAL = 1.0  # at most one notification a second per watched user
ACKNOWLEDGING = frozenset({102, 200, 201, 202, 204})
TOKEN_LIFETIME = 3600
Outcome = Literal["pending", "delivered", "dropped", "rate_limited", "failed", "no_endpoint"]


@dataclass
class PushConfig:
    topics: set[str] = field(default_factory=lambda: {DEFAULT_TOPIC})  # Gmail may publish
    push_endpoint: str | None = None
    audience: str | None = None  # None: the push endpoint URL, as Pub/Sub does
    service_account_email: str = DEFAULT_SERVICE_ACCOUNT
    delay_seconds: float = 0.0
    drop_rate: float = 0.0
    token_reuse_seconds: float = 600.0
    max_attempts: int = 5

    @property
    def effective_audience(self) -> str:
        return self.audience or self.push_endpoint or ""


@dataclass
class Watch:
    topic: str
    label_ids: frozenset[str]
    behavior: Literal["include", "exclude"]
    expires_at: float

    def notifies(self, record: HistoryRecord) -> bool:
        if not self.label_ids:
            return True
        related = bool(self.label_ids & (record.message.labels | set(record.label_ids)))
        return related if self.behavior == "include" else not related


@dataclass
class Notification:
    message_id: str
    email: str
    history_id: int
    published_at: float
    outcome: Outcome = "pending"
    attempts: int = 0
    last_status: int | None = None
    delivered_at: float | None = None
    body: bytes = b""
    authorization: str = ""

    def report(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "email": self.email,
            "history_id": self.history_id,
            "published_at": self.published_at,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "delivered_at": self.delivered_at,
        }


def _numeric_id(text: str) -> str:
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return str(100_000_000_000_000_000_000 + digest % 10**20)


def push_body(message_id: str, email: str, history_id: int, published_at: float) -> bytes:
    data = json.dumps({"emailAddress": email, "historyId": history_id}).encode()
    when = datetime.fromtimestamp(published_at, UTC).isoformat(timespec="milliseconds")
    when = when.replace("+00:00", "Z")
    message = {
        "data": base64.b64encode(data).decode(),
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": when,
        "publish_time": when,
    }
    return json.dumps({"message": message, "subscription": DEFAULT_SUBSCRIPTION}).encode()


class PubSub:
    """The topic Gmail publishes to, its push subscription, and every user's watch."""

    def __init__(self, keys: SigningKeys, issuer: Callable[[], str]) -> None:
        self.keys = keys
        self.issuer = issuer
        self.config = PushConfig()
        self.watches: dict[str, Watch] = {}
        self.log: deque[Notification] = deque(maxlen=200_000)
        self.counters: Counter[str] = Counter()
        self.rng = random.Random()  # noqa: S311  (drops, not secrecy)
        # Tests in one process push through ASGI instead of a socket.
        self.transport: httpx.AsyncBaseTransport | None = None
        self._last_published: dict[str, float] = {}
        self._sequence = 0
        self._token: tuple[str, str, float] | None = None  # (audience, token, minted at)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def reset(self) -> None:
        self.config = PushConfig()
        self.watches.clear()
        self.log.clear()
        self.counters.clear()
        self._last_published.clear()
        self._token = None
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------------ watches

    def watch(
        self,
        email: str,
        topic: str,
        label_ids: frozenset[str],
        behavior: Literal["include", "exclude"],
    ) -> Watch:
        watch = Watch(topic, label_ids, behavior, time.time() + WATCH_LIFETIME_SECONDS)
        self.watches[email] = watch
        self.counters["watch"] += 1
        return watch

    def stop(self, email: str) -> None:
        self.watches.pop(email, None)
        self.counters["stop"] += 1

    def active_watch(self, email: str) -> Watch | None:
        watch = self.watches.get(email)
        return watch if watch is not None and watch.expires_at > time.time() else None

    # ------------------------------------------------------------------ publishing

    def publish(self, email: str, record: HistoryRecord) -> Notification | None:
        """Gmail's notification for a change, if the user is watched: sent, or dropped."""
        watch = self.active_watch(email)
        if watch is None or not watch.notifies(record):
            return None
        now = time.time()
        notification = Notification(self.next_message_id(), email, record.id, now)
        self.log.append(notification)
        self.counters["published"] += 1
        last = self._last_published.get(email)
        if last is not None and now - last < NOTIFICATION_INTERVAL:
            return self._settle(notification, "rate_limited")
        self._last_published[email] = now
        if self.rng.random() < self.config.drop_rate:
            return self._settle(notification, "dropped")
        if not self.config.push_endpoint:
            return self._settle(notification, "no_endpoint")
        notification.body = push_body(notification.message_id, email, record.id, now)
        self._spawn(self._deliver(notification, delay=self.config.delay_seconds))
        return notification

    def _settle(self, notification: Notification, outcome: Outcome) -> Notification:
        notification.outcome = outcome
        self.counters[outcome] += 1
        return notification

    def next_message_id(self) -> str:
        self._sequence += 1
        return str(2_070_443_601_000_000 + self._sequence)

    # ------------------------------------------------------------------ delivery

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, notification: Notification, *, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        for attempt in range(1, self.config.max_attempts + 1):
            notification.authorization = "Bearer " + self.current_token()
            status = await self.post(notification.body, notification.authorization)
            notification.attempts, notification.last_status = attempt, status
            if status in ACKNOWLEDGING:
                notification.delivered_at = time.time()
                self._settle(notification, "delivered")
                return
            await asyncio.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))
        self._settle(notification, "failed")

    async def post(self, body: bytes, authorization: str) -> int:
        """POST one push request to the endpoint: its status, or 0 if it did not answer."""
        endpoint = self.config.push_endpoint
        if not endpoint:
            return 0
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self.transport, timeout=10.0)
        headers = {"Content-Type": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            response = await self._http.post(endpoint, content=body, headers=headers)
        except httpx.HTTPError:
            return 0
        return response.status_code

    async def redeliver(self, notification: Notification, *, fresh_token: bool) -> int:
        """The same push again: its token too (a replay), or a fresh one (a duplicate)."""
        if not notification.body:
            notification.body = push_body(
                notification.message_id, notification.email, notification.history_id,
                notification.published_at,
            )  # fmt: skip
        authorization = notification.authorization
        if fresh_token or not authorization:
            audience, now = self.config.effective_audience, time.time()
            fresh = "Bearer " + self.mint_token(audience, issued_at=now)
            if fresh == authorization:
                # Tokens carry whole seconds: one minted in the same second as the old one
                # would be the same bytes. Pub/Sub's next token is a later one.
                fresh = "Bearer " + self.mint_token(audience, issued_at=now + 1)
            authorization = fresh
        return await self.post(notification.body, authorization)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ tokens

    def current_token(self) -> str:
        """The token Pub/Sub attaches now: reused for a while, as Pub/Sub does."""
        audience = self.config.effective_audience
        now = time.time()
        cached = self._token
        reuse = self.config.token_reuse_seconds
        if cached is None or cached[0] != audience or now - cached[2] >= reuse:
            cached = (audience, self.mint_token(audience), now)
            self._token = cached
        return cached[1]

    def mint_token(
        self,
        audience: str,
        *,
        email: str | None = None,
        issued_at: float | None = None,
        lifetime: int = TOKEN_LIFETIME,
        issuer: str | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A push token as Google signs it; the arguments make the wrong ones tests need."""
        email = email or self.config.service_account_email
        key = key or self.keys.current
        issued = int(issued_at if issued_at is not None else time.time())
        subject = _numeric_id(email)
        claims = {
            "aud": audience,
            "azp": subject,
            "email": email,
            "email_verified": True,
            "exp": issued + lifetime,
            "iat": issued,
            "iss": issuer or self.issuer(),
            "sub": subject,
        }
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key.jwk)

    def report(self) -> dict[str, Any]:
        config = self.config
        return {
            "topics": sorted(config.topics),
            "subscription": DEFAULT_SUBSCRIPTION,
            "push_endpoint": config.push_endpoint,
            "audience": config.effective_audience,
            "service_account_email": config.service_account_email,
            "delay_seconds": config.delay_seconds,
            "drop_rate": config.drop_rate,
            "token_reuse_seconds": config.token_reuse_seconds,
            "watches": {
                email: {"topic": w.topic, "expiration": str(int(w.expires_at * 1000)),
                        "label_ids": sorted(w.label_ids), "behavior": w.behavior}
                for email, w in self.watches.items()
            },
            "counters": dict(self.counters),
        }  # fmt: skip
