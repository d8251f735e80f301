"""Spraying random API keys neither floods the database nor locks out a valid key.

Generated sequences of sprays (random keys, repeated keys, from random IPv4 and IPv6
sources, the valid caller's own included), uses of a valid key, and time passing
past the cache's lifetime: the valid key is never refused, an unknown key costs at
most one query per cache lifetime, and each source's unfamiliar keys are bounded by
its own budget. Then an end-to-end spray of hundreds of keys a second at a broker.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.brokers import Broker
from tests.support.hygiene import register_secret
from token_broker.errors import RateLimited, Unauthenticated
from token_broker.kit.rate_limit import RateLimiter
from token_broker.services.api_keys import Authenticator, Permission, spray_source
from token_broker.services.clients import ClientService
from token_broker.settings import Settings
from token_broker.store.database import Database

TTL = 1.0
BUDGET = 2.0  # unfamiliar keys a second per source (burst twice that)


@contextmanager
def key_queries(database: Database) -> Iterator[list[str]]:
    """The statements that look an API key up, as they run."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_clients" in statement:
            seen.append(statement)

    engine = database.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


FEW = st.sampled_from(["10.0.0.1", "2001:db8::1", "2001:db8::ffff", "::ffff:10.0.0.1"])
SOURCES = st.one_of(
    FEW,
    FEW,
    FEW,
    st.ip_addresses().map(str),
    st.none(),
)
SPRAY_KEYS = st.one_of(
    st.from_regex(r"\Atbk_[A-Za-z0-9_-]{43}\Z"),
    st.sampled_from([f"tbk_{'a' * 42}{c}" for c in "bcd"]),  # the same few keys again
    st.text(max_size=50),
)
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("spray"), SOURCES, st.lists(SPRAY_KEYS, min_size=1, max_size=8)),
        st.tuples(st.just("valid"), SOURCES, st.just([])),
        st.tuples(st.just("wait"), st.none(), st.sampled_from([["0.1"], ["0.6"], ["1.5"], ["3"]])),
    ),
    min_size=1,
    max_size=40,
)


@pytest.fixture
async def valid_key(database: Database) -> str:
    _, key = await ClientService(database).create("valid", ["tokens:read"])
    return register_secret(key)


@given(events=EVENTS)
@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_no_sequence_of_sprays_refuses_a_valid_key(
    database: Database, valid_key: str, events: list[tuple[str, str | None, list[str]]]
) -> None:
    now = [1000.0]

    def clock() -> float:
        return now[0]

    authenticator = Authenticator(
        database,
        ttl=TTL,
        lookups=RateLimiter(BUDGET, BUDGET * 2, clock=clock),
        clock=clock,
    )
    if not hasattr(database, "valid_key"):
        _, key = await ClientService(database).create(
            f"valid-{secrets.token_hex(4)}", ["tokens:read"]
        )
        database.valid_key = register_secret(key)  # type: ignore[attr-defined]
    valid: str = database.valid_key  # type: ignore[attr-defined]
    await authenticator.authenticate(valid, source="192.0.2.1")  # seen once: known from now on
    lookups_since: dict[str, float] = {}
    spent: dict[str, int] = {}
    with key_queries(database) as queries:
        for kind, source, values in events:
            if kind == "wait":
                now[0] += float(values[0])
            elif kind == "valid":
                caller = await authenticator.authenticate(valid, source=source)
                assert caller.permissions == frozenset({"tokens:read"})
            for value in values if kind == "spray" else ():
                before = len(queries)
                with pytest.raises((Unauthenticated, RateLimited)):
                    await authenticator.authenticate(value, source=source)
                if len(queries) > before:
                    # An unknown key was looked up: not again within the cache's lifetime,
                    # and within its source's budget.
                    assert now[0] - lookups_since.get(value, -1e9) >= TTL, value
                    lookups_since[value] = now[0]
                    spent[spray_source(source)] = spent.get(spray_source(source), 0) + 1
    elapsed = now[0] - 1000.0
    for source, count in spent.items():
        assert count <= BUDGET * 2 + BUDGET * elapsed + 1, (source, count)


def test_sources_share_a_budget_by_address_and_ipv6_by_64() -> None:
    assert spray_source("2001:db8::1") == spray_source("2001:db8::ffff:1") == "2001:db8::/64"
    assert spray_source("2001:db8:0:1::1") != spray_source("2001:db8::1")
    assert spray_source("::ffff:10.0.0.1") == spray_source("10.0.0.1") == "10.0.0.1"
    assert spray_source(None) == spray_source("") == "unknown"
    assert spray_source("not-an-address") == "not-an-address"


async def test_a_spray_at_hundreds_of_keys_a_second_refuses_no_valid_key(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    broker: Broker = await broker_factory(
        settings_factory(api_key_cache_seconds=0.3, key_lookups_per_second=20)
    )
    valid = await broker.headers(Permission.ACCOUNTS_READ)
    newcomer = await broker.api_key(Permission.ACCOUNTS_READ)

    def client_from(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=broker.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://broker.test")

    sprayer, neighbour = client_from("198.51.100.7"), client_from("198.51.100.8")
    loop = asyncio.get_running_loop()
    spraying = True
    sprayed: list[int] = []

    async def spray() -> None:
        while spraying:
            key = "tbk_" + secrets.token_urlsafe(32)
            response = await sprayer.get("/v1/accounts", headers={"Authorization": f"Bearer {key}"})
            sprayed.append(response.status_code)

    sprayers = [asyncio.create_task(spray()) for _ in range(8)]
    valid_statuses = []
    try:
        deadline = loop.time() + 2.0  # several cache lifetimes of the valid key
        while loop.time() < deadline:
            # The valid key, from the sprayer's own address and from another one.
            for client in (sprayer, neighbour):
                valid_statuses.append((await client.get("/v1/accounts", headers=valid)).status_code)
            await asyncio.sleep(0.02)
        # A key no replica has seen yet, from an address that is not spraying.
        first_use = await neighbour.get(
            "/v1/accounts", headers={"Authorization": f"Bearer {newcomer}"}
        )
    finally:
        spraying = False
        await asyncio.gather(*sprayers)
        await sprayer.aclose()
        await neighbour.aclose()
    assert len(sprayed) > 500, len(sprayed)  # it was a spray
    assert set(sprayed) == {401, 429}
    assert set(valid_statuses) == {200}, valid_statuses
    assert first_use.status_code == 200
