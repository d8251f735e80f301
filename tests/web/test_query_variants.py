"""Every query parameter of every endpoint, with generated hostile values: never a 5xx.

The endpoints and their parameters are read from the broker's own OpenAPI document
(plus the ones the callback reads without documenting them), so an endpoint added
later is covered without editing this test. Values come from `tests/support/hostile.py`:
digit strings past Python's integer-string limit, Unicode digits, signs, spaces,
underscores, exponents, control characters, bool spellings, invalid UTF-8, text.

And the token fast path accepts exactly what its FastAPI route accepts: the same
generated queries, answered by the app with and without the fast path, match.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.brokers import Broker
from tests.support.flow import Live
from tests.support.google_fakes import SUBJECT
from tests.support.hostile import QUERY_VALUES, RAW_ENCODED, encoded, query_strings
from token_broker.services.api_keys import Permission
from token_broker.web.token_fast_path import TokenFastPath

# The callback reads these from the raw query (they are Google's, not the API's).
UNDOCUMENTED = {"/v1/oauth/callback": ["code", "state", "iss", "error", "scope"]}
HTML_ROUTES = {"/v1/oauth/callback", "/v1/oauth/reauthorize"}
PATH_VALUES = st.one_of(QUERY_VALUES.filter(bool).map(encoded), RAW_ENCODED.filter(bool))
EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


Route = tuple[str, dict[str, str], list[str]]


async def endpoints(live: Live, account: str) -> list[Route]:
    """(template, usable path values, query parameter names) of every GET operation in the
    OpenAPI document."""
    spec = (await live.broker.client.get("/openapi.json")).json()
    listing = await live.broker.client.get(
        f"/v1/accounts/{account}/messages", headers=await live.headers()
    )
    started = await live.start()
    values = {
        "account": account,
        "message_id": listing.json()["messages"][0]["id"],
        "authorization_id": started["id"],
    }
    found = []
    for template, item in spec["paths"].items():
        operation = item.get("get")
        if operation is None:
            continue
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
        names += UNDOCUMENTED.get(template, [])
        found.append((template, values, names))
    assert len(found) >= 9, found
    return found


def refused_cleanly(template: str, response: httpx.Response) -> None:
    assert response.status_code < 500, (template, response.status_code, response.text[:300])
    if response.status_code >= 400:
        expected = "text/html" if template in HTML_ROUTES else "application/problem+json"
        assert response.headers["content-type"].startswith(expected), response.headers


@pytest.fixture
async def scanned(live: Live) -> tuple[Live, list[Route], dict[str, str]]:
    live.provider.state.add_user("alice@example.com", mailbox_size=3)
    assert (await live.connect()).status_code == 200
    return live, await endpoints(live, "alice@example.com"), await live.headers()


@given(data=st.data(), with_key=st.booleans())
@EXAMPLES
async def test_no_query_on_any_endpoint_is_a_server_error(
    scanned: tuple[Live, list[Route], dict[str, str]], data: st.DataObject, with_key: bool
) -> None:
    live, routes, key = scanned
    template, values, names = data.draw(st.sampled_from(routes))
    # Now and then a path parameter is hostile too.
    path = template.format(
        **{
            name: data.draw(st.one_of(st.just(value), PATH_VALUES))
            for name, value in values.items()
        }
    )
    query = data.draw(query_strings(st.sampled_from([*names, "x"])))
    response = await live.broker.client.get(f"{path}?{query}", headers=key if with_key else {})
    refused_cleanly(template, response)


@pytest.mark.parametrize(
    "query", ["min_ttl=%C2%B2", "min_ttl=" + "9" * 5000, "min_ttl=-" + "9" * 5000]
)
async def test_the_examples_of_the_review(connected: Broker, query: str) -> None:
    response = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/access-token?{query}",
        headers=await connected.headers(Permission.TOKENS_READ),
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert response.json()["errors"][0]["loc"] == ["query", "min_ttl"]


def without_fast_path(app: Any) -> Any:
    """The same app (same lifespan, same services), its requests all going to the route."""
    with_it = app.user_middleware
    app.user_middleware = [m for m in with_it if m.cls is not TokenFastPath]
    stack = app.build_middleware_stack()
    app.user_middleware = with_it

    async def route_only(scope: Any, receive: Any, send: Any) -> None:
        scope["app"] = app
        await stack(scope, receive, send)

    return route_only


TOKEN_QUERY_NAMES = st.sampled_from(["min_ttl", "force_refresh", "other"])


@pytest.fixture
async def both_ways(
    connected: Broker,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, dict[str, str]]]:
    """The broker's client, a client of the same app without its fast path, and a key."""
    route = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=without_fast_path(connected.app)),
        base_url="http://broker.test",
    )
    yield connected.client, route, await connected.headers(Permission.TOKENS_READ)
    await route.aclose()


@given(query=query_strings(TOKEN_QUERY_NAMES), key=st.sampled_from(["reader", "none", "bad"]))
@EXAMPLES
async def test_the_fast_path_accepts_exactly_what_the_route_accepts(
    both_ways: tuple[httpx.AsyncClient, httpx.AsyncClient, dict[str, str]], query: str, key: str
) -> None:
    fast_client, route_client, reader = both_ways
    headers = {"reader": reader, "none": {}, "bad": {"Authorization": "Bearer tbk_x"}}[key]
    path = f"/v1/accounts/{SUBJECT}/access-token?{query}"
    fast = await fast_client.get(path, headers=headers)
    slow = await route_client.get(path, headers=headers)
    assert fast.status_code == slow.status_code, (query, fast.text, slow.text)
    assert fast.status_code < 500
    if fast.status_code == 200:
        assert fast.json().keys() == slow.json().keys()
    else:
        assert fast.json()["code"] == slow.json()["code"]
        assert fast.json().get("errors") == slow.json().get("errors")
