"""Bad input is refused cleanly: a documented 4xx problem, never a 500, nothing echoed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT
from tests.support.servers import serve


@pytest.fixture
async def headers(connected: Broker) -> dict[str, str]:
    return await connected.headers()


def refused(response: httpx.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    return dict(response.json())


async def test_oversized_body_is_413(broker: Broker, headers: dict[str, str]) -> None:
    response = await broker.client.post(
        "/v1/authorizations", content=b'{"login_hint": "' + b"a" * 100_000 + b'"}',
        headers={**headers, "Content-Type": "application/json"},
    )  # fmt: skip
    assert refused(response, 413)["code"] == "payload_too_large"


async def test_oversized_headers_and_query_are_refused_by_the_server(broker: Broker) -> None:
    headers = await broker.headers()  # no respx here: the client talks to a real server
    async with serve(broker.app, lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.split()[1] == b"431", status
        async with httpx.AsyncClient() as client:
            long_query = await client.get(
                f"{url}/v1/accounts", params={"email": "a" * 9_000}, headers=headers
            )
            assert refused(long_query, 414)["code"] == "uri_too_long"
            big_header = await client.get(f"{url}/healthz", headers={"X-Padding": "a" * 20_000})
            assert refused(big_header, 431)["code"] == "headers_too_large"
            assert (await client.get(f"{url}/healthz")).status_code == 200  # still serving


@pytest.mark.parametrize(
    "path",
    [
        "/v1/accounts/%FF%FE/access-token",
        "/v1/accounts/%00/access-token",
        "/v1/accounts/a%00b",
        "/v1/accounts/%C0%AF/access-token",
        "/v1/accounts/..%2F..%2Fetc%2Fpasswd/access-token",
        "/v1/accounts/%2e%2e/access-token",
        "/v1/accounts/..%5C..%5Cwindows/access-token",
        "/v1/accounts/'%20OR%20'1'='1/access-token",
        "/v1/accounts/1%3BDROP%20TABLE%20accounts/access-token",
        "/v1/accounts/" + "x" * 5000,
        "/v1/accounts?email=%FF",
        "/v1/accounts?email=%00",
        "/v1/accounts?email=x'%20OR%201=1--",
        "/v1/accounts?status=active%00",
        "/v1/accounts?cursor=%FF%FF",
        "/v1/accounts/alice@example.com/messages?q=%00&labelIds=%FF",
    ],
)
async def test_hostile_paths_and_queries(
    broker: Broker, headers: dict[str, str], path: str
) -> None:
    response = await broker.client.get(path, headers=headers)
    assert response.status_code < 500, (path, response.text[:300])
    if response.status_code >= 400:
        refused(response, response.status_code)
    assert "DROP TABLE" not in response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"login_hint": "\xff\xfe"}',
        b'{"login_hint": "a\\u0000b@example.com"}',
        b'{"login_hint": "\\ud800@example.com"}',
        b'{"scopes": ["openid\\u0000"]}',
        b'{"return_to": "https://app.example/connected\\u0000"}',
        b"[1, 2, 3]",
        b'{"login_hint": {"$ne": null}}',
        b"not json at all",
        b'{"login_hint": "' + b"a" * 400 + b'"}',
    ],
)
async def test_hostile_bodies(broker: Broker, headers: dict[str, str], body: bytes) -> None:
    response = await broker.client.post(
        "/v1/authorizations",
        content=body,
        headers={**headers, "Content-Type": "application/json"},
    )
    refused(response, 400, 422)
    assert "\x00" not in response.text


async def test_exchange_codes_with_control_characters(
    broker: Broker, headers: dict[str, str]
) -> None:
    response = await broker.client.post(
        "/v1/oauth/exchange", json={"code": "4/0A\u0000x"}, headers=headers
    )
    refused(response, 400, 422)


async def test_look_alike_email_is_another_account(broker: Broker, headers: dict[str, str]) -> None:
    assert (
        await broker.client.get("/v1/accounts/ALICE@Example.COM", headers=headers)
    ).status_code == 200
    for look_alike in (
        "\u0430lice@example.com",
        "alice@examp\u04cfe.com",
        "alice@example.com\u200b",
    ):
        response = await broker.client.get(f"/v1/accounts/{look_alike}", headers=headers)
        assert response.status_code in (404, 422)
        assert SUBJECT not in response.text


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example/connected",
        "//evil.example/connected",
        "///evil.example/connected",
        "https:evil.example/connected",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://app.example.evil.example/connected",
        "https://app.example@evil.example/connected",
        "https://evil.example\\@app.example/connected",
        "https://app.example%40evil.example/connected",
        "https://app.example/connected/../../evil",
        "https://app.example/connected/%2e%2e/%2e%2e/evil",
        "https://app.example:443@evil.example/connected",
        "https://app.example/connected#@evil.example",
        "https://app.example\t/connected",
        "http://app.example/connected",
        "https://\u0430pp.example/connected",
    ],
)
async def test_open_redirects_are_refused(
    broker: Broker, headers: dict[str, str], return_to: str
) -> None:
    response = await broker.client.post(
        "/v1/authorizations", json={"return_to": return_to}, headers=headers
    )
    assert refused(response, 400, 422)["code"] in ("return_to_not_allowed", "validation_failed")
