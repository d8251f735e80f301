"""Gmail push in tests: the sandbox's Pub/Sub pushing into a `live` broker, and a webhook receiver.

Fixtures (a plugin of conftest.py): `hooks` (a webhook receiver on 127.0.0.1), `pushing` (the
`live` broker with push configured, alice connected and watched, the sandbox pushing into
the broker over ASGI). Test modules set `live_settings` from `push_settings(...)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import select

from google_sandbox.pubsub import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TOPIC
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.servers import Receiver, serve
from token_broker.services.webhooks import verify
from token_broker.store.models import MailboxWatch

ALICE = "alice@example.com"
ENDPOINT = "http://broker.test/v1/gmail/push"
SECRET = register_secret("whsec-push-tests")
WINDOW = 0.5


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    async with serve(receiver.app) as url:
        yield receiver, f"{url}/hook"


def push_settings(webhook_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "gmail_push_topic": DEFAULT_TOPIC,
        "gmail_push_audience": ENDPOINT,
        "gmail_push_service_account": DEFAULT_SERVICE_ACCOUNT,
        "gmail_push_coalesce_seconds": WINDOW,
        "webhook_url": webhook_url,
        "webhook_secret": SecretStr(SECRET),
        "gmail_backoff_seconds": 0.05,
        "gmail_attempts": 3,
        # Row-count gauges (watches) are counted on a timer: every second here.
        "metrics_accounts_interval_seconds": 1,
        **extra,
    }


@pytest.fixture
async def pushing(live: Live) -> AsyncIterator[Live]:
    """The sandbox's Pub/Sub pushes into the broker (over ASGI), alice connected and watched.

    Every push token it sent is registered as a secret: none may reach a log.
    """
    pubsub = live.provider.state.pubsub
    pubsub.transport = httpx.ASGITransport(app=live.broker.app)
    pubsub.config.push_endpoint = ENDPOINT
    live.provider.state.add_user(ALICE, mailbox_size=20)
    assert (await live.connect(ALICE)).status_code == 200
    await eventually(lambda: watch_of(live))
    yield live
    for notification in pubsub.log:
        if notification.authorization:
            register_secret(notification.authorization.removeprefix("Bearer "))


async def watch_of(live: Live, status: str = "active") -> MailboxWatch | None:
    async with live.broker.state.database.transaction() as session:
        rows = (await session.exec(select(MailboxWatch))).all()
    return next((row for row in rows if row.status == status), None)


def mailbox_webhooks(hooks: tuple[Receiver, str]) -> list[dict[str, Any]]:
    events = []
    for headers, body in hooks[0].received:
        assert verify(SECRET, headers["token-broker-signature"], body, now=time.time())
        event = json.loads(body)
        if event["type"] == "mailbox.changed":
            events.append(event)
    return events


async def add_message(live: Live, email: str = ALICE) -> dict[str, Any]:
    # Gmail sends at most one notification a second per user: let that second pass.
    live.provider.state.pubsub._last_published.clear()
    response = await live.browser.post(
        f"{live.provider.url}/_sandbox/users/{email}/mailbox/messages", json={}
    )
    return dict(response.json())


async def deliver(live: Live, **spec: Any) -> int:
    response = await live.browser.post(
        f"{live.provider.url}/_sandbox/pubsub/deliveries", json={"email": ALICE, **spec}
    )
    assert response.status_code == 200, response.text
    return int(response.json()["status"])


async def metric(live: Live, line: str) -> float:
    text = (await live.broker.client.get("/metrics")).text
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0
