"""When Gmail's notifications go missing: the fallback check of quiet watched mailboxes, and two
replicas sharing the coalescing windows (one webhook per window, whichever replica got the push).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from google_sandbox.pubsub import push_body
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.push import (
    ALICE,
    ENDPOINT,
    add_message,
    mailbox_webhooks,
    metric,
    push_settings,
    watch_of,
)
from tests.support.servers import Receiver

FALLBACK = 1.5
SLACK = 3.0  # a loaded test machine; the benchmark measures the real delay


@pytest.fixture
def live_settings(hooks: tuple[Receiver, str]) -> dict[str, Any]:
    return push_settings(hooks[1], gmail_push_fallback_seconds=FALLBACK)


async def test_a_dropped_push_is_caught_by_the_fallback(
    pushing: Live,
    hooks: tuple[Receiver, str],
) -> None:
    live = pushing
    live.provider.state.pubsub.config.drop_rate = 1.0  # every notification lost
    headers = await live.headers()
    start = await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)
    changed_at = time.monotonic()
    added = await add_message(live)
    (event,) = await eventually(lambda: mailbox_webhooks(hooks), within=FALLBACK + SLACK)
    assert time.monotonic() - changed_at < FALLBACK + SLACK
    assert event["trigger"] == "fallback"
    assert event["history_id"] == added["history"][0]["id"]
    assert live.provider.state.pubsub.counters["dropped"] == 1
    changes = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start.json()["cursor"]}, headers=headers
    )
    assert [c["message_id"] for c in changes.json()["changes"]] == [added["message"]["id"]]
    assert await metric(live, 'token_broker_gmail_fallback_checks_total{outcome="changed"}') == 1
    assert await metric(live, 'token_broker_mailbox_webhooks_total{trigger="fallback"}') == 1


async def test_a_quiet_unchanged_mailbox_is_checked_and_nothing_is_sent(
    pushing: Live,
    hooks: tuple[Receiver, str],
) -> None:
    live = pushing
    checked = 'token_broker_gmail_fallback_checks_total{outcome="unchanged"}'
    await eventually(lambda: _at_least(live, checked, 2), within=2 * FALLBACK + SLACK)
    assert mailbox_webhooks(hooks) == []
    # 2 quota units a check: a history.list of one record.
    assert live.provider.state.calls["gmail.history.list"] >= 2


async def _at_least(live: Live, line: str, count: float) -> bool:
    return await metric(live, line) >= count


async def test_history_gone_while_quiet_still_tells_the_consumer(
    pushing: Live,
    hooks: tuple[Receiver, str],
) -> None:
    live = pushing
    live.provider.state.pubsub.config.drop_rate = 1.0
    headers = await live.headers()
    start = await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)
    await add_message(live)
    await live.browser.post(f"{live.provider.url}/_sandbox/users/{ALICE}/mailbox/history/expire")
    (event,) = await eventually(lambda: mailbox_webhooks(hooks), within=FALLBACK + SLACK)
    assert event["trigger"] == "fallback"
    expired = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start.json()["cursor"]}, headers=headers
    )
    assert expired.status_code == 410


async def test_two_replicas_share_each_window(
    backend: str,
    pushing: Live,
    hooks: tuple[Receiver, str],
    broker_factory: Any,
    settings_factory: Any,
    live_settings: dict[str, Any],
) -> None:
    if backend != "postgres":
        pytest.skip("several brokers share a database only on Postgres")
    live = pushing
    other = await broker_factory(settings_factory(**live.provider.settings(), **live_settings))
    watch = await watch_of(live)
    assert watch is not None
    assert watch.history_id is not None
    base = int(watch.history_id)
    pubsub = live.provider.state.pubsub
    token = register_secret(pubsub.mint_token(ENDPOINT))

    async def push(client: Any, offset: int) -> int:
        body = push_body(pubsub.next_message_id(), ALICE, base + offset, time.time())
        answer = await client.post(
            "/v1/gmail/push", content=body, headers={"Authorization": f"Bearer {token}"}
        )
        return int(answer.status_code)

    replicas = [live.broker.client, other.client]
    statuses = await asyncio.gather(*(push(replicas[i % 2], i + 1) for i in range(12)))
    assert set(statuses) == {204}
    (event,) = await eventually(lambda: mailbox_webhooks(hooks), within=10)
    assert event["history_id"] == str(base + 12)
    await eventually(lambda: _closed(live))
    # Both replicas look for closed windows; neither sends a second webhook.
    await asyncio.gather(
        live.broker.state.notices.close_windows(), other.state.notices.close_windows()
    )
    assert len(mailbox_webhooks(hooks)) == 1


async def _closed(live: Live) -> bool:
    watch = await watch_of(live)
    return watch is not None and watch.window_ends_at is None
