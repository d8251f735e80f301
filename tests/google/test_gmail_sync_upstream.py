"""The exact Gmail requests behind changes, watches and stops (respx), and how answers map."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT, token_body
from tests.support.polling import eventually
from token_broker.services.api_keys import Permission
from token_broker.settings import Settings

HISTORY = "/gmail/v1/users/me/history"
PROFILE = "/gmail/v1/users/me/profile"
TOPIC = "projects/broker-project/topics/gmail"
TOKEN = "Bearer ya29.upstream-access-token"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    # Quick retries: the tests below see Gmail fail on purpose.
    return settings_factory(gmail_backoff_seconds=0.01, gmail_attempts=2, gmail_budget_seconds=2)


@pytest.fixture
async def headers(connected: Broker) -> dict[str, str]:
    return await connected.headers(Permission.MESSAGES_READ)


def record(history_id: str, kind: str, message_id: str, labels: list[str]) -> dict[str, Any]:
    message = {"id": message_id, "threadId": "t" + message_id, "labelIds": labels}
    entry: dict[str, Any] = {"message": message}
    if kind.startswith("labels"):
        entry = {"message": {**message, "labelIds": ["INBOX"]}, "labelIds": labels}
    return {"id": history_id, "messages": [{"id": message_id}], kind: [entry]}


async def test_changes_requests_are_exact_and_every_page_is_followed(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    profile = upstream.get(PROFILE).respond(
        json={"emailAddress": "alice@example.com", "messagesTotal": 3, "threadsTotal": 2,
              "historyId": "1000"}
    )  # fmt: skip
    start = await connected.client.get(f"/v1/accounts/{SUBJECT}/changes", headers=headers)
    assert start.status_code == 200, start.text
    assert start.json()["changes"] == []
    assert start.json()["history_id"] == "1000"
    assert profile.calls.last.request.headers["authorization"] == TOKEN

    history = upstream.get(HISTORY)
    history.side_effect = [
        httpx.Response(200, json={
            "history": [record("1003", "messagesAdded", "m1", ["INBOX", "UNREAD"]),
                        record("1010", "labelsRemoved", "m1", ["UNREAD"])],
            "nextPageToken": "page-2", "historyId": "1020",
        }),
        httpx.Response(200, json={
            "history": [record("1020", "messagesDeleted", "m0", [])], "historyId": 1021,
        }),
    ]  # fmt: skip
    answer = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/changes",
        params=[("cursor", start.json()["cursor"]), ("labelId", "INBOX"),
                ("historyTypes", "messageAdded"), ("historyTypes", "labelRemoved")],
        headers=headers,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["changes"] == [
        {"type": "message_added", "history_id": "1003", "message_id": "m1", "thread_id": "tm1",
         "label_ids": ["INBOX", "UNREAD"]},
        {"type": "labels_removed", "history_id": "1010", "message_id": "m1", "thread_id": "tm1",
         "label_ids": ["UNREAD"]},
        {"type": "message_deleted", "history_id": "1020", "message_id": "m0", "thread_id": "tm0",
         "label_ids": []},
    ]  # fmt: skip
    assert (body["count"], body["pages"], body["history_id"]) == (3, 2, "1021")
    first, second = (call.request for call in history.calls)
    assert first.headers["authorization"] == TOKEN
    assert list(first.url.params.multi_items()) == [
        ("startHistoryId", "1000"), ("maxResults", "500"), ("labelId", "INBOX"),
        ("historyTypes", "messageAdded"), ("historyTypes", "labelRemoved"),
    ]  # fmt: skip
    assert second.url.params["pageToken"] == "page-2"
    assert second.url.params["startHistoryId"] == "1000"

    # The next cursor starts where the last page ended.
    history.side_effect = None
    history.respond(json={"historyId": "1021"})
    again = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/changes", params={"cursor": body["cursor"]}, headers=headers
    )
    assert again.json()["changes"] == []
    assert history.calls.last.request.url.params["startHistoryId"] == "1021"


async def test_a_cursor_gmail_forgot_is_410_with_a_fresh_cursor(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    upstream.get(PROFILE).respond(json={"emailAddress": "a@b.c", "historyId": "50"})
    cursor = (
        await connected.client.get(f"/v1/accounts/{SUBJECT}/changes", headers=headers)
    ).json()["cursor"]
    upstream.get(HISTORY).respond(
        404,
        json={
            "error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "errors": [{"reason": "notFound"}],
            }
        },
    )
    upstream.get(PROFILE).respond(json={"emailAddress": "a@b.c", "historyId": "9000"})
    expired = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/changes", params={"cursor": cursor}, headers=headers
    )
    assert expired.status_code == 410
    problem = expired.json()
    assert problem["code"] == "cursor_expired"
    assert problem["history_id"] == "9000"
    assert problem["cursor"] != cursor
    assert expired.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (httpx.Response(400, json={"error": {"code": 400, "message": "Invalid label: Label_9",
                                             "errors": [{"reason": "invalidArgument"}]}}),
         400, "unknown_label"),
        (httpx.Response(403, json={"error": {"errors": [{"reason": "forbidden"}]}}),
         502, "upstream_error"),
        (httpx.Response(200, json={"history": [{"id": "x"}], "historyId": "1"}),
         503, "upstream_unavailable"),
        (httpx.Response(429, headers={"Retry-After": "7"}), 429, "upstream_rate_limited"),
    ],
    ids=["unknown label", "refused", "garbled", "rate limited"],
)  # fmt: skip
async def test_gmail_failures_become_documented_problems(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str],
    answer: httpx.Response, status: int, code: str,
) -> None:  # fmt: skip
    upstream.get(PROFILE).respond(json={"emailAddress": "a@b.c", "historyId": "50"})
    cursor = (
        await connected.client.get(f"/v1/accounts/{SUBJECT}/changes", headers=headers)
    ).json()["cursor"]
    upstream.get(HISTORY).mock(return_value=answer)
    failed = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/changes", params={"cursor": cursor, "labelId": "Label_9"},
        headers=headers,
    )  # fmt: skip
    assert failed.status_code == status, failed.text
    assert failed.json()["code"] == code


async def test_a_forged_or_foreign_cursor_is_400_before_any_gmail_call(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    history = upstream.get(HISTORY)
    signer = connected.state.mailbox_changes.signer
    foreign = signer.sign("gmail-changes", {"a": "another-account", "h": "5"})
    for cursor, detail in (
        ("v1.test1.eyJhIjoiYiJ9.AAAA", "not one this API returned"),
        (signer.sign("accounts-page", {"a": "x", "h": "5"}), "not one this API returned"),
        (foreign, "another account"),
    ):
        refused = await connected.client.get(
            f"/v1/accounts/{SUBJECT}/changes", params={"cursor": cursor}, headers=headers
        )
        assert refused.status_code == 400
        assert refused.json()["code"] == "invalid_cursor"
        assert detail in refused.json()["detail"]
    assert not history.called


# --------------------------------------------------------------------------- watch and stop


@pytest.fixture
def push_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        gmail_push_topic=TOPIC,
        gmail_push_audience="https://broker.example/v1/gmail/push",
        gmail_push_service_account="push@broker-project.iam.gserviceaccount.com",
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret=SecretStr("whsec"),
    )


async def test_connect_watches_and_delete_stops_with_exact_requests(
    broker_factory: Callable[[Settings], Any], push_settings: Settings,
    upstream: respx.MockRouter,
) -> None:  # fmt: skip
    broker = await broker_factory(push_settings)
    upstream.post("/token").respond(json=token_body())
    watch = upstream.post("/gmail/v1/users/me/watch").respond(
        json={"historyId": "4242", "expiration": "1900000000000"}
    )
    stop = upstream.post("/gmail/v1/users/me/stop").respond(204)
    upstream.post("/revoke").respond(200)
    connected = await broker.client.post(
        "/v1/oauth/exchange", json={"code": "4/0Aconnected"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )  # fmt: skip
    assert connected.status_code == 200
    await eventually(lambda: watch.called)
    request = watch.calls.last.request
    assert request.headers["authorization"] == TOKEN
    assert json.loads(request.content) == {"topicName": TOPIC}
    await eventually(lambda: _active(broker))
    deleted = await broker.client.delete(
        f"/v1/accounts/{SUBJECT}", headers=await broker.headers(Permission.ACCOUNTS_WRITE)
    )
    assert deleted.status_code == 200
    assert stop.call_count == 1
    assert stop.calls.last.request.headers["authorization"] == TOKEN
    assert stop.calls.last.request.content == b""
    assert await broker.state.watches.listing() == []


async def _active(broker: Broker) -> bool:
    rows = await broker.state.watches.listing()
    return bool(rows) and rows[0][0].status == "active" and rows[0][0].history_id == "4242"
