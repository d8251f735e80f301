"""The exact Gmail requests behind message details (respx): one batch POST per 50 ids with
Google's multipart shape, messages.get for one message and for parts retried alone."""

from __future__ import annotations

import json
from email import message_from_bytes
from email.policy import compat32
from typing import Any

import httpx
import pytest
import respx

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT
from token_broker.services.api_keys import Permission

LIST_PATH = "/gmail/v1/users/me/messages"
BATCH_PATH = "/batch/gmail/v1"


@pytest.fixture
async def headers(connected: Broker) -> dict[str, str]:
    async def no_sleep(seconds: float) -> None:
        return None

    connected.state.listing.sleep = no_sleep
    return await connected.headers(Permission.MESSAGES_READ)


def listing(count: int) -> httpx.Response:
    messages = [{"id": f"{index:016x}", "threadId": f"{index:016x}"} for index in range(count)]
    return httpx.Response(200, json={"messages": messages, "resultSizeEstimate": count})


def calls_of(request: httpx.Request) -> list[tuple[str, str, list[str]]]:
    """Each part of a batch request: Content-ID, request line, its own header lines."""
    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
    envelope = message_from_bytes(raw + request.content, policy=compat32)
    calls = []
    for part in envelope.get_payload():
        assert part["Content-Type"] == "application/http"
        lines = part.get_payload().replace("\r\n", "\n").strip("\n").split("\n")
        calls.append((part["Content-ID"], lines[0], lines[1:]))
    return calls


def batch_answer(parts: list[tuple[int, int, Any]], boundary: str = "batch_abc") -> httpx.Response:
    body = ""
    for index, status, document in parts:
        body += (
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{index}>\r\n\r\n"
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps(document)}\r\n"
        )
    return httpx.Response(
        200, content=(body + f"--{boundary}--\r\n").encode(),
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
    )  # fmt: skip


def message(index: int) -> dict[str, Any]:
    return {"id": f"{index:016x}", "threadId": f"{index:016x}", "labelIds": ["INBOX"]}


async def test_batch_requests_are_exact(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    upstream.get(LIST_PATH).mock(return_value=listing(60))

    def answer(request: httpx.Request) -> httpx.Response:
        calls = calls_of(request)
        first = int(calls[0][1].split(" ")[1].split("/")[-1].split("?")[0], 16)
        return batch_answer([(i, 200, message(first + i)) for i in range(len(calls))])

    batch = upstream.post(BATCH_PATH).mock(side_effect=answer)
    response = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/messages",
        params=[("format", "metadata"), ("metadataHeaders", "Subject"),
                ("metadataHeaders", "From")],
        headers=headers,
    )  # fmt: skip
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["messages"]] == [f"{i:016x}" for i in range(60)]
    first, second = (call.request for call in batch.calls)
    assert first.url.path == BATCH_PATH
    assert first.headers["authorization"] == "Bearer ya29.upstream-access-token"
    assert first.headers["content-type"].startswith("multipart/mixed; boundary=batch_")
    calls = calls_of(first)
    assert len(calls) == 50
    assert len(calls_of(second)) == 10
    assert calls[0] == (
        "<0>",
        "GET /gmail/v1/users/me/messages/0000000000000000"
        "?format=metadata&metadataHeaders=Subject&metadataHeaders=From HTTP/1.1",
        [],  # no token inside the parts: the outer Authorization applies to each
    )
    assert calls[49][0] == "<49>"


async def test_parts_are_matched_by_content_id_and_failures_retried_alone(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    upstream.get(LIST_PATH).mock(return_value=listing(4))
    # Answered out of order, one part rate limited, one gone, one missing.
    upstream.post(BATCH_PATH).mock(
        return_value=batch_answer(
            [(2, 404, {"error": {"code": 404, "errors": [{"reason": "notFound"}]}}),
             (0, 200, message(0)),
             (1, 429, {"error": {"code": 429, "errors": [{"reason": "rateLimitExceeded"}]}})]
        )
    )  # fmt: skip
    single = upstream.get(path__regex=r"/gmail/v1/users/me/messages/[0-9a-f]+$").mock(
        side_effect=lambda request: httpx.Response(
            200, json=message(int(request.url.path.rsplit("/", 1)[1], 16))
        )
    )
    response = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/messages", params={"format": "minimal"}, headers=headers
    )
    body = response.json()
    assert [m["id"] for m in body["messages"]] == [f"{i:016x}" for i in (0, 1, 3)]
    assert body["not_fetched"] == [
        {"id": f"{2:016x}", "threadId": f"{2:016x}", "status": 404, "reason": "notFound"}
    ]
    retried = sorted(call.request.url.path.rsplit("/", 1)[1] for call in single.calls)
    assert retried == [f"{1:016x}", f"{3:016x}"]
    assert all(call.request.url.params["format"] == "minimal" for call in single.calls)
    assert all(
        call.request.headers["authorization"] == "Bearer ya29.upstream-access-token"
        for call in single.calls
    )


async def test_one_message_request_is_exact(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str]
) -> None:
    route = upstream.get(f"{LIST_PATH}/18c0a6750012af3e").mock(
        return_value=httpx.Response(200, json={"id": "18c0a6750012af3e", "threadId": "t"})
    )
    response = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/messages/18c0a6750012af3e",
        params=[("format", "metadata"), ("metadataHeaders", "Subject")],
        headers=headers,
    )
    assert response.json() == {"id": "18c0a6750012af3e", "threadId": "t"}
    (call,) = route.calls
    assert list(call.request.url.params.multi_items()) == [
        ("format", "metadata"), ("metadataHeaders", "Subject"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (httpx.Response(404, json={"error": {"code": 404}}), 404, "message_not_found"),
        (httpx.Response(403, json={"error": {"errors": [{"reason": "forbidden"}]}}), 502,
         "upstream_error"),
        (httpx.Response(200, json={"id": "someone-else"}), 503, "upstream_unavailable"),
        (httpx.Response(429, json={}, headers={"Retry-After": "9"}), 429, "upstream_rate_limited"),
    ],
    ids=["gone", "refused", "wrong-id", "rate-limited"],
)  # fmt: skip
async def test_one_message_failures(
    connected: Broker, upstream: respx.MockRouter, headers: dict[str, str],
    answer: httpx.Response, status: int, code: str,
) -> None:  # fmt: skip
    upstream.get(f"{LIST_PATH}/18c0a6750012af3e").mock(return_value=answer)
    response = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/messages/18c0a6750012af3e", headers=headers
    )
    assert response.status_code == status
    assert response.json()["code"] == code
