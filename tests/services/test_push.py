"""Gmail push end to end: the sandbox's Pub/Sub pushes into the broker, which verifies each
push, coalesces them per account, and sends signed `mailbox.changed` webhooks; watches are
made on connect, renewed by the sweep at a bounded rate, stopped on delete, dropped on revoke.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.push import (
    ALICE,
    ENDPOINT,
    add_message,
    deliver,
    mailbox_webhooks,
    metric,
    push_settings,
    watch_of,
)
from tests.support.servers import Receiver
from token_broker.kit.clock import utcnow
from token_broker.store.models import MailboxWatch, WebhookDelivery


@pytest.fixture
def live_settings(hooks: tuple[Receiver, str]) -> dict[str, Any]:
    return push_settings(hooks[1])


# --------------------------------------------------------------------------- the happy path


async def test_connect_watches_and_a_change_reaches_the_consumer(
    pushing: Live, hooks: tuple[Receiver, str]
) -> None:
    live = pushing
    watch = await watch_of(live)
    assert watch is not None
    assert watch.expires_at is not None
    assert timedelta(hours=12) <= watch.renew_at - utcnow() <= timedelta(hours=36)
    assert ALICE in live.provider.state.pubsub.watches
    headers = await live.headers()
    start = await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)

    added = await add_message(live)
    (event,) = await eventually(lambda: mailbox_webhooks(hooks), within=10)
    assert event["account"]["email"] == ALICE
    assert event["history_id"] == added["history"][0]["id"]
    assert event["trigger"] == "push"
    changes = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start.json()["cursor"]}, headers=headers
    )
    assert [c["message_id"] for c in changes.json()["changes"]] == [added["message"]["id"]]
    assert await metric(live, 'token_broker_gmail_pushes_total{outcome="accepted"}') == 1
    assert await metric(live, 'token_broker_mailbox_webhooks_total{trigger="push"}') == 1

    async def one_active_watch_counted() -> bool:
        return await metric(live, 'token_broker_gmail_watches{state="active"}') == 1

    await eventually(one_active_watch_counted, within=5)


async def test_pushes_in_one_window_make_one_webhook(
    pushing: Live, hooks: tuple[Receiver, str]
) -> None:
    live = pushing
    watch = await watch_of(live)
    assert watch is not None
    assert watch.history_id is not None
    base = int(watch.history_id)
    for offset in (5, 9, 7):  # in any order, inside one window
        assert await deliver(live, history_id=base + offset) == 204
    (event,) = await eventually(lambda: mailbox_webhooks(hooks), within=10)
    assert event["history_id"] == str(base + 9)
    await eventually(lambda: _window_closed(live))
    async with live.broker.state.database.transaction() as session:
        queued = (await session.exec(select(WebhookDelivery))).all()
    assert [d.event_type for d in queued].count("mailbox.changed") == 1
    assert await metric(live, "token_broker_mailbox_webhooks_coalesced_total") == 2

    # Nothing newer than what was sent: acknowledged, no webhook. Newer: the next window.
    assert await deliver(live, history_id=base + 8) == 204
    assert await deliver(live, history_id=base + 12) == 204
    await eventually(lambda: len(mailbox_webhooks(hooks)) == 2, within=10)
    assert mailbox_webhooks(hooks)[1]["history_id"] == str(base + 12)


async def _window_closed(live: Live) -> bool:
    watch = await watch_of(live)
    return watch is not None and watch.window_ends_at is None and watch.pending_history_id is None


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"signed_by": "stranger"}, "signature"),
        ({"issued_seconds_ago": 7300}, "expired"),
        ({"audience": "https://elsewhere.example/push"}, "audience"),
        ({"service_account_email": "intruder@evil-project.iam.gserviceaccount.com"},
         "service_account"),
        ({"issuer": "https://issuer.example"}, "issuer"),
        ({"with_token": False}, "missing"),
    ],
    ids=["forged", "expired", "wrong audience", "wrong service account", "wrong issuer",
         "no token"],
)  # fmt: skip
async def test_bad_tokens_are_refused_and_counted(
    pushing: Live, hooks: tuple[Receiver, str], spec: dict[str, Any], reason: str
) -> None:
    live = pushing
    assert await deliver(live, **spec) == 401
    assert await metric(live, f'token_broker_gmail_push_refusals_total{{reason="{reason}"}}') == 1
    assert await metric(live, 'token_broker_gmail_pushes_total{outcome="refused"}') == 1
    watch = await watch_of(live)
    assert watch is not None
    assert watch.window_ends_at is None
    assert watch.last_push_at is None


async def test_a_replayed_push_is_refused_and_a_redelivery_acknowledged(
    pushing: Live, hooks: tuple[Receiver, str]
) -> None:
    live = pushing
    await add_message(live)
    await eventually(lambda: mailbox_webhooks(hooks), within=10)
    (notification,) = [n for n in live.provider.state.pubsub.log if n.outcome == "delivered"]
    control = f"{live.provider.url}/_sandbox/pubsub/notifications/{notification.message_id}"
    replay = await live.browser.post(f"{control}/redeliver")
    assert replay.json()["status"] == 401
    assert await metric(live, 'token_broker_gmail_push_refusals_total{reason="replayed"}') == 1
    again = await live.browser.post(f"{control}/redeliver", params={"fresh_token": True})
    assert again.json()["status"] == 204  # Pub/Sub delivering it again
    assert await metric(live, 'token_broker_gmail_pushes_total{outcome="duplicate"}') == 1
    assert len(mailbox_webhooks(hooks)) == 1


async def test_unknown_addresses_are_acknowledged_counted_and_dropped(
    pushing: Live, hooks: tuple[Receiver, str]
) -> None:
    live = pushing
    assert await deliver(live, email="stranger@example.com", history_id=123) == 204
    assert await metric(live, 'token_broker_gmail_pushes_total{outcome="unknown_address"}') == 1
    assert mailbox_webhooks(hooks) == []


async def test_a_body_that_is_no_gmail_notification_is_400(pushing: Live) -> None:
    live = pushing
    token = register_secret(live.provider.state.pubsub.mint_token(ENDPOINT))
    for body in (b"{}", b"not json", b'{"message": {"messageId": "1", "data": "!!!"}}',
                 b'{"message": {"messageId": "1", "data": "e30="}}'):  # fmt: skip
        answer = await live.broker.client.post(
            "/v1/gmail/push", content=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 400
        assert answer.json()["code"] == "invalid_push"
    refused = await live.broker.client.post("/v1/gmail/push", content=b"{}")
    assert refused.status_code == 401
    assert refused.json()["code"] == "push_unauthenticated"
    assert refused.headers["www-authenticate"] == "Bearer"


# --------------------------------------------------------------------------- watches


async def test_the_sweep_renews_due_watches_at_the_bounded_rate(
    pushing: Live, hooks: tuple[Receiver, str]
) -> None:
    live = pushing
    for email in ("bob@example.com", "carol@example.com"):
        live.provider.state.add_user(email, mailbox_size=5)
        assert (await live.connect(email)).status_code == 200
    await eventually(lambda: _all_active(live, 3))
    keeper = live.broker.state.watches
    async with live.broker.state.database.transaction() as session:
        for row in (await session.exec(select(MailboxWatch))).all():
            row.renew_at = utcnow() - timedelta(minutes=1)
            session.add(row)
    calls = live.provider.state.calls["gmail.watch"]
    keeper.per_second = 1 / 60  # one a minute: the first sweep may renew one, no more
    keeper._allowance = 1.0
    first = await keeper.sweep()
    assert first.leader
    assert first.renewals == {"ok": 1}
    assert (await keeper.sweep()).renewals == {}
    assert live.provider.state.calls["gmail.watch"] == calls + 1
    renewed = [w for w in await _watches(live) if w.renew_at > utcnow()]
    assert len(renewed) == 1
    assert timedelta(hours=12) <= renewed[0].renew_at - utcnow() <= timedelta(hours=36)


async def _watches(live: Live) -> list[MailboxWatch]:
    async with live.broker.state.database.transaction() as session:
        return list((await session.exec(select(MailboxWatch))).all())


async def _all_active(live: Live, count: int) -> bool:
    watches = await _watches(live)
    return len(watches) == count and all(w.status == "active" for w in watches)


async def test_delete_stops_the_watch_and_revoke_drops_it(
    pushing: Live, hooks: tuple[Receiver, str]
) -> None:
    live = pushing
    headers = await live.headers()
    # Revoked at Google: the broker finds out on its next refresh and stops the watch.
    live.provider.state.revoke_user(ALICE)
    refreshed = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/access-token", params={"force_refresh": "true"}, headers=headers
    )
    assert refreshed.status_code == 409
    assert await watch_of(live, "stopped") is not None
    assert await deliver(live) == 204
    assert await metric(live, 'token_broker_gmail_pushes_total{outcome="not_watched"}') == 1
    assert mailbox_webhooks(hooks) == []
    assert (await live.broker.state.watches.sweep()).renewals == {}

    # Reconnected: watched again, then deleted: users.stop, and the watch is gone.
    assert (await live.connect(ALICE)).status_code == 200
    await eventually(lambda: watch_of(live))
    stops = live.provider.state.calls["gmail.stop"]
    deleted = await live.broker.client.delete(f"/v1/accounts/{ALICE}", headers=headers)
    assert deleted.status_code == 200
    assert live.provider.state.calls["gmail.stop"] == stops + 1
    assert ALICE not in live.provider.state.pubsub.watches
    assert await _watches(live) == []
    assert await metric(live, 'token_broker_gmail_watch_calls_total{call="stop",outcome="ok"}') == 1


async def test_push_is_404_when_not_configured(broker: Any) -> None:
    answer = await broker.client.post("/v1/gmail/push", content=b"{}")
    assert answer.status_code == 404
    assert answer.json()["code"] == "push_not_configured"
