"""Message details end to end against the sandbox: every format, batching, per-part failures,
Gmail's quota enforced, the JSON cap, one message, and a caller who goes away.

The reference for every message is what Google's own client library fetches from
the same sandbox.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from sqlmodel import select

from google_sandbox.quota import QuotaSettings
from google_sandbox.records import FaultRule
from tests.support.flow import Live
from tests.support.polling import eventually
from tests.support.servers import serve
from token_broker.store.models import AuditEvent

GET = "gmail.messages.get"
BATCH = "gmail.batch"
LIST = "gmail.messages.list"
NDJSON = {"Accept": "application/x-ndjson"}


@pytest.fixture
def live_settings() -> dict[str, Any]:
    # A fast quota (tests must run quickly) and a quick backoff; batches of 20.
    return {
        "gmail_backoff_seconds": 0.05,
        "gmail_attempts": 4,
        "gmail_batch_size": 20,
        "gmail_quota_units_per_minute": 60_000,
        "gmail_quota_burst_units": 200,
        "gmail_details_json_max_messages": 150,
    }


async def connect(live: Live, mailbox: int) -> str:
    live.provider.state.add_user("alice@example.com", mailbox_size=mailbox)
    assert (await live.connect()).status_code == 200
    live.provider.state.calls.clear()
    live.provider.state.call_log.clear()
    return str(live.provider.state.users["alice@example.com"].sub)


def client_library_fetch(
    live: Live, ids: list[str], message_format: str, headers: list[str]
) -> list[dict[str, Any]]:
    """Each message as google-api-python-client's messages().get() fetches it."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    state = live.provider.state
    grant = state.new_grant(
        "alice@example.com", "reference", {"https://www.googleapis.com/auth/gmail.readonly"}
    )
    token, _ = state.issue_access_token(grant)
    service = build(
        "gmail", "v1", credentials=Credentials(token), static_discovery=True,
        cache_discovery=False, client_options={"api_endpoint": live.provider.url + "/"},
    )  # fmt: skip
    extra = {"metadataHeaders": headers} if headers else {}
    return [
        service.users().messages().get(userId="me", id=i, format=message_format, **extra).execute()
        for i in ids
    ]


def parse_ndjson(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    return lines[:-1], lines[-1]


@pytest.mark.parametrize(
    ("message_format", "headers"),
    [("minimal", []), ("metadata", ["Subject", "From", "Date"]), ("metadata", []),
     ("full", []), ("raw", [])],
)  # fmt: skip
async def test_details_match_googles_client_message_by_message(
    live: Live, message_format: str, headers: list[str]
) -> None:
    subject = await connect(live, 70)
    params = [("format", message_format), ("includeSpamTrash", "true")]
    params += [("metadataHeaders", name) for name in headers]
    streamed = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params=params,
        headers={**await live.headers(), **NDJSON},
    )
    assert streamed.status_code == 200
    messages, final = parse_ndjson(streamed.text)
    ids = [m.id for m in live.provider.state.users["alice@example.com"].mailbox]
    assert [m["id"] for m in messages] == ids
    assert final == {
        "status": "complete", "count": 70, "pages": 1, "result_size_estimate": 201,
        "fetched": 70, "batches": 4, "not_fetched_count": 0, "not_fetched": [],
    }  # fmt: skip
    assert live.provider.state.calls[BATCH] == 4  # 20 + 20 + 20 + 10
    reference = await asyncio.to_thread(client_library_fetch, live, ids, message_format, headers)
    assert messages == reference

    as_json = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", params=params, headers=await live.headers()
    )
    body = as_json.json()
    assert body["messages"] == reference
    assert body["fetched"] == 70
    assert body["count"] == 70


async def test_a_deleted_message_is_reported_and_the_rest_delivered(live: Live) -> None:
    subject = await connect(live, 45)
    user = live.provider.state.users["alice@example.com"]
    gone = [user.mailbox[3], user.mailbox[30]]
    user.deleted.update(m.id for m in gone)
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"format": "minimal", "includeSpamTrash": "true"},
        headers={**await live.headers(), **NDJSON},
    )
    messages, final = parse_ndjson(response.text)
    assert len(messages) == 43
    assert final["status"] == "complete"
    assert final["not_fetched_count"] == 2
    assert final["not_fetched"] == [
        {"id": m.id, "threadId": m.thread_id, "status": 404, "reason": "notFound"} for m in gone
    ]


async def test_rate_limited_and_failing_parts_are_retried_alone(live: Live) -> None:
    subject = await connect(live, 40)
    state = live.provider.state
    state.faults += [
        FaultRule(GET, status=429, after=2, times=1),  # part 3 of the first batch
        FaultRule(GET, status=503, after=5, times=2),  # parts 6 and 7
        FaultRule(GET, status=403, reason="userRateLimitExceeded", after=25, times=1),
        FaultRule(GET, status=400, reason="invalidArgument", after=30, times=1),
    ]
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"format": "minimal", "includeSpamTrash": "true"},
        headers={**await live.headers(), **NDJSON},
    )
    messages, final = parse_ndjson(response.text)
    mailbox = state.users["alice@example.com"].mailbox
    # The permanent 400 is reported; everything else arrives, in order.
    failed = mailbox[30]
    assert [m["id"] for m in messages] == [m.id for m in mailbox if m.id != failed.id]
    assert final["not_fetched"] == [
        {"id": failed.id, "threadId": failed.thread_id, "status": 400, "reason": "invalidArgument"}
    ]
    assert state.calls[BATCH] == 2
    # 40 in batches, then 4 retried alone, each once.
    assert state.calls[GET] == 44


async def test_a_failing_batch_is_retried_and_401_refreshes_once(live: Live) -> None:
    subject = await connect(live, 30)
    state = live.provider.state
    state.faults += [
        FaultRule(BATCH, status=503, times=1),
        FaultRule(GET, status=401, after=4, times=1),
    ]
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"format": "minimal", "includeSpamTrash": "true"},
        headers={**await live.headers(), **NDJSON},
    )
    messages, final = parse_ndjson(response.text)
    assert len(messages) == 30
    assert final["status"] == "complete"
    assert state.calls[BATCH] == 3  # the first refused, then two batches
    assert state.calls["token:refresh_token"] == 1


async def test_gmails_quota_enforced_is_never_exceeded(live: Live) -> None:
    """With the sandbox enforcing the same rate (and 64 concurrent calls), two listings of one
    user at once get no rate-limit answer, and together stay within the rate."""
    subject = await connect(live, 400)
    state = live.provider.state
    # The sandbox tolerates a larger burst than the broker spends (200 units), as Gmail
    # must for the broker's default: the margin absorbs calls bunched by a loaded machine.
    state.quota.configure(
        QuotaSettings(units_per_minute=60_000, burst_units=500, concurrent_limit=64)
    )
    headers = {**await live.headers(), **NDJSON}
    params = {"format": "minimal", "includeSpamTrash": "true"}
    started = time.monotonic()
    first, second = await asyncio.gather(
        live.broker.client.get(f"/v1/accounts/{subject}/messages", params=params, headers=headers),
        live.broker.client.get(f"/v1/accounts/{subject}/messages", params=params, headers=headers),
    )
    elapsed = time.monotonic() - started
    for response in (first, second):
        messages, final = parse_ndjson(response.text)
        assert len(messages) == 400
        assert final["status"] == "complete"
    report = state.quota.report()
    assert report["rate_limited"] == 0
    assert report["concurrency_limited"] == 0
    spent = report["spent"]["alice@example.com"]
    assert spent == 2 * (400 * 5 + 5)
    # Within the rate: the broker's burst, plus 1,000 units a second.
    assert spent <= 200 + 1000 * elapsed + 10
    metrics = (await live.broker.client.get("/metrics")).text
    assert 'token_broker_gmail_quota_units_total{method="messages.get"} 4000.0' in metrics
    assert 'token_broker_gmail_quota_units_total{method="messages.list"} 10.0' in metrics
    assert "token_broker_gmail_quota_wait_seconds_total" in metrics


async def test_json_with_details_is_capped(live: Live) -> None:
    subject = await connect(live, 300)
    url = f"/v1/accounts/{subject}/messages"
    refused = await live.broker.client.get(
        url, params={"format": "minimal"}, headers=await live.headers()
    )
    assert refused.status_code == 400
    problem = refused.json()
    assert problem["code"] == "too_many_for_json"
    assert problem["max_messages"] == 150
    assert "application/x-ndjson" in problem["detail"]
    assert live.provider.state.calls[BATCH] == 0  # no details fetched for nothing
    allowed = await live.broker.client.get(
        url, params={"format": "minimal", "limit": 150}, headers=await live.headers()
    )
    assert allowed.status_code == 200
    assert allowed.json()["fetched"] == 150


async def test_one_message(live: Live) -> None:
    subject = await connect(live, 20)
    message = live.provider.state.users["alice@example.com"].mailbox[5]
    url = f"/v1/accounts/{subject}/messages/{message.id}"
    headers = await live.headers()
    full = await live.broker.client.get(url, headers=headers)
    assert full.status_code == 200
    assert full.headers["cache-control"] == "no-store"
    (reference,) = await asyncio.to_thread(client_library_fetch, live, [message.id], "full", [])
    assert full.json() == reference
    metadata = await live.broker.client.get(
        url, params=[("format", "metadata"), ("metadataHeaders", "Subject")], headers=headers
    )
    assert metadata.json()["payload"]["headers"] == [{"name": "Subject", "value": message.subject}]

    live.provider.state.users["alice@example.com"].deleted.add(message.id)
    missing = await live.broker.client.get(url, headers=headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "message_not_found"
    assert (await live.broker.client.get(f"{url}x!", headers=headers)).status_code == 422
    assert (
        await live.broker.client.get(url, params={"format": "fancy"}, headers=headers)
    ).status_code == 422


async def test_one_message_waits_no_longer_than_the_budget_for_quota(
    live: Live, settings_factory: Any, broker_factory: Any
) -> None:
    subject = await connect(live, 20)
    message_id = live.provider.state.users["alice@example.com"].mailbox[0].id
    # Another broker sharing nothing: its own quota, which one listing of 20 spends.
    slow = await broker_factory(
        settings_factory(
            **live.provider.settings(), gmail_quota_units_per_minute=60,
            gmail_quota_burst_units=5, gmail_budget_seconds=2,
        )
    )  # fmt: skip
    headers = await slow.headers()
    ok = await slow.client.get(f"/v1/accounts/{subject}/messages/{message_id}", headers=headers)
    assert ok.status_code == 200
    refused = await slow.client.get(
        f"/v1/accounts/{subject}/messages/{message_id}", headers=headers
    )
    assert refused.status_code == 429
    assert refused.json()["code"] == "upstream_rate_limited"
    assert int(refused.headers["retry-after"]) >= 4


async def test_client_disconnect_stops_the_fetch(live: Live) -> None:
    subject = await connect(live, 2000)
    state = live.provider.state
    state.faults.append(FaultRule(BATCH, kind="latency", delay=0.05))
    headers = {**await live.headers(), **NDJSON}
    async with serve(live.broker.app, lifespan="off") as url, httpx.AsyncClient() as http:
        async with http.stream(
            "GET", f"{url}/v1/accounts/{subject}/messages",
            params={"format": "minimal", "includeSpamTrash": "true"}, headers=headers,
        ) as response:  # fmt: skip
            lines = 0
            async for _ in response.aiter_lines():
                lines += 1
                if lines >= 100:
                    break

        async def audited() -> list[AuditEvent]:
            await live.broker.state.audit.flush()
            async with live.broker.state.database.transaction() as session:
                query = select(AuditEvent).where(AuditEvent.action == "messages_listed")
                return list((await session.exec(query)).all())

        (event,) = await eventually(audited, within=10)
    assert event.outcome == "client_disconnected"
    assert event.detail["batches"] < 20
    assert state.calls[BATCH] <= event.detail["batches"] + 2
