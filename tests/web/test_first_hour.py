"""Small things a newcomer trips over: one timestamp form, a clear answer to a body sent as a
form, and a readiness probe that does not fill the log."""

from __future__ import annotations

import logging
import re

import pytest

from tests.support.brokers import Broker
from token_broker.services.api_keys import Permission

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_every_timestamp_of_the_api_ends_in_z(connected: Broker) -> None:
    headers = await connected.headers()
    token = await connected.client.get(
        "/v1/accounts/alice@example.com/access-token", headers=headers
    )
    assert token.status_code == 200, token.text
    account = (await connected.client.get("/v1/accounts/alice@example.com", headers=headers)).json()
    started = await connected.client.post("/v1/authorizations", json={}, headers=headers)
    stamps = [
        token.json()["expires_at"],
        account["created_at"],
        account["updated_at"],
        account["access_token_expires_at"],
        started.json()["expires_at"],
    ]
    assert all(RFC3339_Z.match(stamp) for stamp in stamps), stamps
    # The fast path and the route write the token's expiry the same way.
    assert token.json()["expires_at"] == account["access_token_expires_at"]


@pytest.mark.parametrize("path", ["/v1/authorizations", "/v1/oauth/exchange"])
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
async def test_a_json_body_sent_as_something_else_is_415(
    broker: Broker, path: str, content_type: str
) -> None:
    response = await broker.client.post(
        path,
        content=b'{"login_hint": "alice@example.com", "code": "4/x"}',
        headers={**await broker.headers(Permission.ACCOUNTS_WRITE), "Content-Type": content_type},
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in body["detail"]


async def test_a_json_body_without_a_content_type_is_415_too(broker: Broker) -> None:
    response = await broker.client.post(
        "/v1/oauth/exchange",
        content=b'{"code": "4/x"}',
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert "content-type" not in response.request.headers
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    # An authorization needs no body at all: none is fine.
    empty = await broker.client.post(
        "/v1/authorizations", headers=await broker.headers(Permission.ACCOUNTS_WRITE)
    )
    assert empty.status_code == 201, empty.text


async def test_a_json_body_that_does_not_fit_is_still_422(broker: Broker) -> None:
    response = await broker.client.post(
        "/v1/oauth/exchange", json={"code": ""}, headers=await broker.headers()
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"


async def test_415_is_documented_on_routes_with_a_body(broker: Broker) -> None:
    spec = (await broker.client.get("/openapi.json")).json()
    for path in ("/v1/authorizations", "/v1/oauth/exchange"):
        assert (
            "unsupported_media_type"
            in spec["paths"][path]["post"]["responses"]["415"]["description"]
        )


async def test_readiness_probes_log_nothing_from_alembic(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            assert (await broker.client.get("/readyz")).status_code == 200
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
