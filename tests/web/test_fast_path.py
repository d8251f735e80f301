"""The access-token endpoint's fast path answers exactly as the documented route would."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT, token_body
from token_broker.services.api_keys import Permission


async def get(broker: Broker, account: str = SUBJECT, **kwargs: object) -> httpx.Response:
    return await broker.client.get(f"/v1/accounts/{account}/access-token", **kwargs)  # type: ignore[arg-type]


async def test_answers_and_problems(connected: Broker) -> None:
    reader = await connected.headers(Permission.TOKENS_READ)
    ok = await get(connected, headers=reader)
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/json"
    assert ok.headers["cache-control"] == "no-store"
    assert set(ok.json()) == {"access_token", "token_type", "expires_at", "expires_in", "scopes"}
    assert ok.headers["x-request-id"]

    cases = [
        ({}, 401, "unauthenticated"),
        ({"Authorization": "Basic abc"}, 401, "unauthenticated"),
        ({"Authorization": "Bearer tbk_" + "x" * 43}, 401, "unauthenticated"),
        (await connected.headers(Permission.MESSAGES_READ), 403, "forbidden"),
    ]
    for headers, status, code in cases:
        response = await get(connected, headers=headers)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert (await get(connected, headers=cases[0][0])).headers["www-authenticate"] == "Bearer"
    missing = await get(connected, "nobody@example.com", headers=reader)
    assert missing.status_code == 404
    assert missing.json()["code"] == "account_not_found"


@pytest.mark.parametrize(
    "params",
    [{"min_ttl": "abc"}, {"min_ttl": "3301"}, {"min_ttl": "-1"}, {"force_refresh": "maybe"}],
)
async def test_parameters_it_does_not_accept_get_the_routes_validation(
    connected: Broker, params: dict[str, str]
) -> None:
    response = await get(
        connected, params=params, headers=await connected.headers(Permission.TOKENS_READ)
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"


@pytest.mark.parametrize(("value", "refreshes"), [("true", 1), ("YES", 1), ("0", 0), ("off", 0)])
async def test_force_refresh_spellings(
    connected: Broker, upstream: respx.MockRouter, value: str, refreshes: int
) -> None:
    route = upstream.post("/token")
    route.calls.clear()  # type: ignore[attr-defined]
    route.return_value = httpx.Response(
        200, json=token_body(access_token="ya29.new", refresh_token=None)
    )
    reader = await connected.headers(Permission.TOKENS_READ)
    assert (await get(connected, headers=reader)).status_code == 200
    response = await get(connected, params={"force_refresh": value}, headers=reader)
    assert response.status_code == 200
    assert route.call_count == refreshes


async def test_the_route_is_still_documented(connected: Broker) -> None:
    spec = (await connected.client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/accounts/{account}/access-token"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {
        "account",
        "min_ttl",
        "force_refresh",
        "scope",
    }
    assert operation["security"] == [{"ApiKey": []}]
    assert "409" in operation["responses"]
