"""Gmail listings end to end against the sandbox: every page, faults, revocation, streaming."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest
from sqlmodel import select

from google_sandbox.mailbox import generate_mailbox
from google_sandbox.records import FaultRule
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.servers import serve
from token_broker.store.models import AuditEvent

LIST = "gmail.messages.list"


@pytest.fixture
def live_settings() -> dict[str, Any]:
    """A quick Gmail backoff for these tests (Retry-After is still honoured)."""
    return {"gmail_backoff_seconds": 0.05, "gmail_attempts": 4}


async def connect(live: Live, mailbox: int) -> str:
    live.provider.state.add_user("alice@example.com", mailbox_size=mailbox)
    assert (await live.connect()).status_code == 200
    live.provider.state.calls.clear()
    live.provider.state.call_log.clear()
    return str(live.provider.state.users["alice@example.com"].sub)


def parse_ndjson(text: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    return lines[:-1], lines[-1]


@pytest.mark.parametrize("size", [0, 1, 500, 501, 25_000])
async def test_every_message_once_in_gmails_order(live: Live, size: int) -> None:
    subject = await connect(live, size)
    expected = [m.id for m in generate_mailbox("alice@example.com", size)]
    params = {"includeSpamTrash": "true"}
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", params=params, headers=await live.headers()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert list(body) == ["messages", "count", "result_size_estimate", "pages"]
    assert [m["id"] for m in body["messages"]] == expected
    assert body["count"] == size
    # Gmail's estimate is not a count (201 for any non-empty query); the listing never uses it.
    estimate = 201 if size else 0
    assert body["result_size_estimate"] == estimate
    calls = max(1, math.ceil(size / 500))
    assert body["pages"] == calls
    assert live.provider.state.calls[LIST] == calls

    live.provider.state.calls.clear()
    streamed = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params=params,
        headers={**await live.headers(), "Accept": "application/x-ndjson"},
    )
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    messages, final = parse_ndjson(streamed.text)
    assert [m["id"] for m in messages] == expected
    assert set(messages[0]) == {"id", "threadId"} if messages else True
    assert final == {
        "status": "complete",
        "count": size,
        "pages": calls,
        "result_size_estimate": estimate,
    }
    assert live.provider.state.calls[LIST] == calls


async def test_json_answers_past_their_cap_point_to_ndjson(
    provider: Any, broker_factory: Any, settings_factory: Any
) -> None:
    broker = await broker_factory(
        settings_factory(**provider.settings(), json_listing_max_messages=1000)
    )
    async with httpx.AsyncClient() as browser:
        live = Live(provider, broker, browser)
        subject = await connect(live, 2600)
        headers = await live.headers()
        url = f"/v1/accounts/{subject}/messages"
        params = {"includeSpamTrash": "true"}

        refused = await broker.client.get(url, params=params, headers=headers)
        assert refused.status_code == 400
        problem = refused.json()
        assert problem["code"] == "too_many_for_json"
        assert problem["max_messages"] == 1000
        assert "application/x-ndjson" in problem["detail"]
        assert provider.state.calls[LIST] <= 4  # it stopped paging once past the cap

        at_the_cap = await broker.client.get(url, params={**params, "limit": 1000}, headers=headers)
        assert at_the_cap.status_code == 200
        assert at_the_cap.json()["count"] == 1000
        streamed = await broker.client.get(
            url, params=params, headers={**headers, "Accept": "application/x-ndjson"}
        )
        assert parse_ndjson(streamed.text)[1]["count"] == 2600
        await broker.state.audit.flush()
        async with broker.state.database.transaction() as session:
            listed = (
                await session.exec(select(AuditEvent).where(AuditEvent.action == "messages_listed"))
            ).all()
        assert [e.outcome for e in listed] == ["too_many_for_json", "ok", "ok"]


async def test_query_and_labels_reach_gmail(live: Live) -> None:
    subject = await connect(live, 1200)
    mailbox = generate_mailbox("alice@example.com", 1200)
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params=[("q", "is:unread"), ("labelIds", "INBOX"), ("labelIds", "CATEGORY_UPDATES")],
        headers=await live.headers(),
    )
    expected = [
        m.id
        for m in mailbox
        if {"UNREAD", "INBOX", "CATEGORY_UPDATES"} <= m.labels and not {"SPAM", "TRASH"} & m.labels
    ]
    assert [m["id"] for m in response.json()["messages"]] == expected


async def test_limit_stops_early(live: Live) -> None:
    subject = await connect(live, 2000)
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"limit": 700, "includeSpamTrash": "true"},
        headers=await live.headers(),
    )
    body = response.json()
    assert body["count"] == 700
    assert len(body["messages"]) == 700
    assert body["pages"] == 2
    assert live.provider.state.calls[LIST] == 2


async def test_rate_limits_and_5xx_mid_listing_are_ridden_out(live: Live) -> None:
    subject = await connect(live, 3000)
    state = live.provider.state
    state.faults += [
        # Calls 3, 5 and 6, and 9 fail (counting retries): pages 3, 4 and 6.
        FaultRule(LIST, status=429, retry_after=1, after=2, times=1),
        FaultRule(LIST, status=503, after=4, times=2),
        FaultRule(LIST, status=403, reason="userRateLimitExceeded", after=8, times=1),
    ]
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"includeSpamTrash": "true"},
        headers=await live.headers(),
    )
    assert response.status_code == 200
    assert response.json()["count"] == 3000
    log = state.calls_to(LIST)
    statuses = [call.status for call in log]
    assert statuses.count(200) == 6
    assert sorted(s for s in statuses if s != 200) == [403, 429, 503, 503]
    # Backoff honoured: after the 429 with Retry-After: 1, at least a second passed.
    limited = statuses.index(429)
    assert log[limited + 1].at - log[limited].at >= 1.0
    first_503 = statuses.index(503)
    assert log[first_503 + 1].at - log[first_503].at >= 0.05
    assert log[first_503 + 2].at - log[first_503 + 1].at >= 0.1  # doubled


async def test_persistent_rate_limit_becomes_429_with_retry_after(live: Live) -> None:
    subject = await connect(live, 100)
    live.provider.state.faults.append(FaultRule(LIST, status=429, retry_after=2))
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", headers=await live.headers()
    )
    assert response.status_code == 429
    assert response.json()["code"] == "upstream_rate_limited"
    assert response.headers["retry-after"] == "2"
    assert live.provider.state.calls[LIST] <= 4


async def test_persistent_5xx_becomes_503(live: Live) -> None:
    subject = await connect(live, 100)
    live.provider.state.faults.append(FaultRule(LIST, status=500))
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", headers=await live.headers()
    )
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert live.provider.state.calls[LIST] == 4


async def test_other_gmail_errors_are_502_with_the_reason_only(live: Live) -> None:
    subject = await connect(live, 100)
    live.provider.state.faults.append(FaultRule(LIST, status=404, reason="notFound"))
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", headers=await live.headers()
    )
    assert response.status_code == 502
    body = response.json()
    assert body["code"] == "upstream_error"
    assert body["gmail_reason"] == "notFound"
    assert "Requested entity" not in response.text
    assert live.provider.state.calls[LIST] == 1


async def test_expired_token_mid_listing_is_refreshed_once(live: Live) -> None:
    subject = await connect(live, 1500)
    live.provider.state.faults.append(FaultRule(LIST, status=401, after=1, times=1))
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"includeSpamTrash": "true"},
        headers=await live.headers(),
    )
    assert response.status_code == 200
    assert response.json()["count"] == 1500
    assert live.provider.state.calls["token:refresh_token"] == 1


async def test_revoked_mid_listing_json_is_409(live: Live) -> None:
    subject = await connect(live, 3000)
    live.provider.state.faults.append(
        FaultRule(LIST, kind="revoke", reason="alice@example.com", after=2, times=1)
    )
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", headers=await live.headers()
    )
    assert response.status_code == 409
    assert response.json()["code"] == "reauthorization_required"


async def test_revoked_mid_listing_stream_ends_with_a_failure_line(live: Live) -> None:
    subject = await connect(live, 3000)
    live.provider.state.faults.append(
        FaultRule(LIST, kind="revoke", reason="alice@example.com", after=2, times=1)
    )
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"includeSpamTrash": "true"},
        headers={**await live.headers(), "Accept": "application/x-ndjson"},
    )
    assert response.status_code == 200
    messages, final = parse_ndjson(response.text)
    assert len(messages) == 1000
    assert final["status"] == "failed"
    assert final["count"] == 1000
    assert final["error"]["code"] == "reauthorization_required"
    assert final["error"]["authorization_url"]


async def test_revoked_before_listing_is_409_even_when_streaming(live: Live) -> None:
    subject = await connect(live, 10)
    live.provider.state.revoke_user("alice@example.com")
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        headers={**await live.headers(), "Accept": "application/x-ndjson"},
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "reauthorization_required"


async def listings_audited(live: Live) -> list[AuditEvent]:
    await live.broker.state.audit.flush()
    async with live.broker.state.database.transaction() as session:
        query = select(AuditEvent).where(AuditEvent.action == "messages_listed")
        return list((await session.exec(query)).all())


async def test_listing_is_audited(live: Live) -> None:
    subject = await connect(live, 700)
    await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"includeSpamTrash": "true"},
        headers=await live.headers(),
    )
    (event,) = await listings_audited(live)
    assert event.outcome == "ok"
    assert event.detail == {"pages": 2, "count": 700, "retries": 0}
    assert event.client_id is not None
    assert event.account_id is not None


@pytest.mark.parametrize("revoked_after_pages", [0, 2])
async def test_a_failed_listing_is_audited_with_its_problem(
    live: Live, revoked_after_pages: int
) -> None:
    subject = await connect(live, 3000)
    if revoked_after_pages:
        live.provider.state.faults.append(
            FaultRule(LIST, kind="revoke", reason="alice@example.com",
                      after=revoked_after_pages, times=1)
        )  # fmt: skip
    else:
        live.provider.state.revoke_user("alice@example.com")
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params={"includeSpamTrash": "true"},
        headers=await live.headers(),
    )
    assert response.status_code == 409
    (event,) = await listings_audited(live)
    assert event.outcome == "reauthorization_required"
    assert event.detail["count"] == 500 * revoked_after_pages


async def test_client_disconnect_stops_the_paging(live: Live) -> None:
    subject = await connect(live, 25_000)
    state = live.provider.state
    state.faults.append(FaultRule(LIST, kind="latency", delay=0.05))
    headers = {**await live.headers(), "Accept": "application/x-ndjson"}
    async with serve(live.broker.app, lifespan="off") as url, httpx.AsyncClient() as http:
        async with http.stream(
            "GET", f"{url}/v1/accounts/{subject}/messages", headers=headers
        ) as response:
            lines = 0
            async for _ in response.aiter_lines():
                lines += 1
                if lines >= 1200:
                    break

        (event,) = await eventually(lambda: listings_audited(live), within=10)
    assert event.outcome == "client_disconnected"
    assert event.detail["pages"] < 50
    assert state.calls[LIST] <= event.detail["pages"] + 1


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
async def test_an_unknown_label_is_a_400_naming_it(live: Live, ndjson: bool) -> None:
    """Gmail's 400 "Invalid label: X" is the caller's mistake: a documented 4xx, not a 502."""
    subject = await connect(live, 100)
    accept = {"Accept": "application/x-ndjson"} if ndjson else {}
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages",
        params=[("labelIds", "INBOX"), ("labelIds", "Receipts")],
        headers={**await live.headers(), **accept},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "unknown_label"
    assert problem["label_id"] == "Receipts"
    assert "Receipts" in problem["detail"]
    assert live.provider.state.calls[LIST] == 1  # not retried


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"includeSpamTrash": True},
        {"q": "is:unread"},
        {"labelIds": ["INBOX", "CATEGORY_UPDATES"]},
        {"q": "from:github -is:starred", "includeSpamTrash": True},
        {"q": "zzzznomatch"},
    ],
    ids=["all", "spam-trash", "q", "labels", "q-spam-trash", "none"],
)
async def test_the_listing_is_identical_to_googles_client(
    live: Live, query: dict[str, Any]
) -> None:
    """google-api-python-client's list/list_next over the same mailbox lists the same ids."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    subject = await connect(live, 1_234)
    issued = await live.broker.client.get(
        f"/v1/accounts/{subject}/access-token", headers=await live.headers()
    )
    token = register_secret(issued.json()["access_token"])

    def googles_listing() -> list[dict[str, str]]:
        # pageToken by hand: list_next cannot rebuild a URL with a repeated labelIds.
        service = build(
            "gmail", "v1", credentials=Credentials(token), static_discovery=True,
            cache_discovery=False, client_options={"api_endpoint": live.provider.url + "/"},
        )  # fmt: skip
        found: list[dict[str, str]] = []
        page: dict[str, Any] = {}
        while True:
            after = page.get("nextPageToken")
            page = service.users().messages().list(userId="me", pageToken=after, **query).execute()
            found += page.get("messages", [])
            if "nextPageToken" not in page:
                return found

    expected = await asyncio.to_thread(googles_listing)
    params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in query.items()]
    flat = [(k, item) for k, v in params for item in (v if isinstance(v, list) else [v])]
    listed = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", params=flat, headers=await live.headers()
    )
    assert listed.status_code == 200
    assert listed.json()["messages"] == expected
    assert listed.json()["count"] == len(expected)
