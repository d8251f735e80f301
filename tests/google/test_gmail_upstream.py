"""The exact Gmail requests the broker sends, and its backoff waits (respx, no real sleeping)."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT
from token_broker.services.api_keys import Permission

LIST_PATH = "/gmail/v1/users/me/messages"


@pytest.fixture
async def headers(connected: Broker) -> dict[str, str]:
    return await connected.headers(Permission.MESSAGES_READ)


def page(ids: list[str], next_token: str | None = None, estimate: int = 0) -> httpx.Response:
    body: dict[str, object] = {"resultSizeEstimate": estimate}
    if ids:
        body["messages"] = [{"id": i, "threadId": f"t{i}"} for i in ids]
    if next_token:
        body["nextPageToken"] = next_token
    return httpx.Response(200, json=body)


async def test_list_requests_are_exact(
    broker: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    route = upstream.get(LIST_PATH)
    route.side_effect = [page(["a", "b"], "next-1", 3), page(["c"])]
    response = await broker.client.get(
        f"/v1/accounts/{SUBJECT}/messages",
        params=[("q", "from:ada is:unread"), ("labelIds", "INBOX"), ("labelIds", "UNREAD"),
                ("includeSpamTrash", "true")],
        headers=headers,
    )  # fmt: skip
    assert response.status_code == 200
    assert response.json() == {
        "messages": [{"id": "a", "threadId": "ta"}, {"id": "b", "threadId": "tb"},
                     {"id": "c", "threadId": "tc"}],
        "count": 3,
        "result_size_estimate": 3,
        "pages": 2,
    }  # fmt: skip
    first, second = (call.request for call in route.calls)
    assert first.url.path == LIST_PATH
    assert first.headers["authorization"] == "Bearer ya29.upstream-access-token"
    assert list(first.url.params.multi_items()) == [
        ("maxResults", "500"),
        ("q", "from:ada is:unread"),
        ("labelIds", "INBOX"),
        ("labelIds", "UNREAD"),
        ("includeSpamTrash", "true"),
    ]
    assert second.url.params["pageToken"] == "next-1"
    assert second.url.params["maxResults"] == "500"


async def test_empty_mailbox(
    broker: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    upstream.get(LIST_PATH).respond(json={"resultSizeEstimate": 0})
    response = await broker.client.get(f"/v1/accounts/{SUBJECT}/messages", headers=headers)
    assert response.json() == {"messages": [], "count": 0, "result_size_estimate": 0, "pages": 1}


async def test_backoff_is_exponential_with_jitter_and_honours_retry_after(
    broker: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    broker.state.listing.sleep = record
    route = upstream.get(LIST_PATH)
    route.side_effect = [
        httpx.Response(503, json={"error": {"code": 503}}),
        httpx.Response(500, json={"error": {"code": 500}}),
        httpx.Response(429, json={"error": {"code": 429}}, headers={"Retry-After": "7"}),
        httpx.TimeoutException("slow"),
        page(["a"]),
    ]
    response = await broker.client.get(f"/v1/accounts/{SUBJECT}/messages", headers=headers)
    assert response.status_code == 200
    assert route.call_count == 5
    # Base 1 s doubling, plus up to 1 s of jitter; never sooner than Retry-After.
    assert 1 <= waits[0] <= 2
    assert 2 <= waits[1] <= 3
    assert waits[2] == pytest.approx(7, abs=1.01)
    assert waits[2] >= 7
    assert 8 <= waits[3] <= 9


async def test_budget_cuts_a_long_retry_after_short(
    broker: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    broker.state.listing.sleep = _never
    route = upstream.get(LIST_PATH)
    route.return_value = httpx.Response(
        429, json={"error": {"code": 429}}, headers={"Retry-After": "3600"}
    )
    response = await broker.client.get(f"/v1/accounts/{SUBJECT}/messages", headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3600"
    assert route.call_count == 1  # waiting an hour is past the budget: tell the caller instead


async def _never(seconds: float) -> None:
    raise AssertionError(f"slept {seconds}s")


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>oops</html>"),
        httpx.Response(200, json={"messages": "nope"}),
        httpx.Response(502, text=""),
    ],
    ids=["html", "bad-shape", "empty-502"],
)
async def test_malformed_pages_are_retried_then_503(
    broker: Broker, upstream: respx.MockRouter, headers: dict[str, str], answer: httpx.Response
) -> None:
    async def record(seconds: float) -> None:
        return None

    broker.state.listing.sleep = record
    route = upstream.get(LIST_PATH)
    route.return_value = answer
    response = await broker.client.get(f"/v1/accounts/{SUBJECT}/messages", headers=headers)
    assert response.status_code == 503
    assert route.call_count == broker.state.settings.gmail_attempts
    assert "oops" not in response.text
