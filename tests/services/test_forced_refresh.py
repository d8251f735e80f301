"""Forced refreshes: at most one upstream refresh per account per interval, however many
callers force, and callers inside the interval get the token the last one minted.

Generated schedules of forced requests (bursts of concurrent callers, gaps shorter and
longer than the interval) against a token endpoint that mints a new token each call;
two brokers sharing one database; the metric and the audit of throttled forces.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT, token_body
from tests.support.hygiene import register_secret
from token_broker.services.api_keys import Permission
from token_broker.settings import Settings
from token_broker.store.models import AuditEvent

INTERVAL = 0.4


class Minting:
    """The token endpoint: a new access token per call, with when it was asked."""

    def __init__(self, upstream: respx.MockRouter) -> None:
        self.calls: list[tuple[float, str]] = []
        upstream.post("/token").mock(side_effect=self.answer)

    def answer(self, _request: httpx.Request) -> httpx.Response:
        token = register_secret(f"ya29.minted-{len(self.calls)}-{time.time_ns()}")
        self.calls.append((time.monotonic(), token))
        # The first call is the code exchange, which brings the refresh token.
        refresh_token = None if len(self.calls) > 1 else "1//forced-refresh-token"
        return httpx.Response(200, json=token_body(access_token=token, refresh_token=refresh_token))


@pytest.fixture
async def throttled(
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    upstream: respx.MockRouter,
) -> tuple[Broker, Minting, dict[str, str]]:
    broker: Broker = await broker_factory(
        settings_factory(forced_refresh_interval_seconds=INTERVAL)
    )
    minting = Minting(upstream)
    connected = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Aforced"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert connected.status_code == 200, connected.text
    minting.calls.clear()  # the exchange is not a refresh
    return broker, minting, await broker.headers(Permission.TOKENS_READ)


async def forced(broker: Broker, headers: dict[str, str]) -> tuple[float, httpx.Response, float]:
    sent = time.monotonic()
    response = await broker.client.get(
        f"/v1/accounts/{SUBJECT}/access-token?force_refresh=true", headers=headers
    )
    return sent, response, time.monotonic()


SCHEDULES = st.lists(
    st.tuples(st.sampled_from([0.0, 0.05, 0.15, 0.5]), st.sampled_from([1, 3, 20])),
    min_size=1,
    max_size=5,
)


@given(schedule=SCHEDULES)
@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_at_most_one_refresh_per_interval_and_the_last_token_inside_it(
    throttled: tuple[Broker, Minting, dict[str, str]], schedule: list[tuple[float, int]]
) -> None:
    broker, minting, headers = throttled
    await asyncio.sleep(INTERVAL)  # a fresh interval for each schedule
    answers: list[tuple[float, httpx.Response, float]] = []
    for gap, callers in schedule:
        await asyncio.sleep(gap)  # the schedule's spacing in time, not synchronisation
        answers += await asyncio.gather(*(forced(broker, headers) for _ in range(callers)))
    assert all(response.status_code == 200 for _, response, _ in answers)
    refreshes = [at for at, _ in minting.calls]
    assert all(later - earlier >= INTERVAL for earlier, later in itertools.pairwise(refreshes))
    assert len(refreshes) >= 1  # the first force of a fresh interval refreshes
    minted = {token: at for at, token in minting.calls}
    for sent, response, received in answers:
        token = response.json()["access_token"]
        if token in minted:
            # Refreshed for it, or the refresh of the last interval, at most one interval old.
            assert sent - INTERVAL <= minted[token] + 0.05
            assert minted[token] <= received
        newer = [at for at, _ in minting.calls if minted.get(token, -1.0) < at <= sent]
        assert not newer, "an older token was served after a newer one was minted"


async def test_a_storm_of_forces_makes_one_refresh(
    throttled: tuple[Broker, Minting, dict[str, str]],
) -> None:
    broker, minting, headers = throttled
    await asyncio.sleep(INTERVAL)
    storm = await asyncio.gather(*(forced(broker, headers) for _ in range(100)))
    tokens = {response.json()["access_token"] for _, response, _ in storm}
    assert len(minting.calls) == 1
    assert tokens == {minting.calls[0][1]}


async def test_throttled_forces_are_counted_and_audited(
    throttled: tuple[Broker, Minting, dict[str, str]],
) -> None:
    broker, minting, headers = throttled
    await asyncio.sleep(INTERVAL)
    for _ in range(4):
        await forced(broker, headers)
    assert len(minting.calls) == 1
    metrics = (await broker.client.get("/metrics")).text
    assert 'token_broker_access_token_requests_total{outcome="force_throttled"} 3.0' in metrics
    # Tokens issued are audited per (client, account, window): closing the window writes
    # its counts by source.
    await broker.state.audit.flush(closing=True)
    async with broker.state.database.transaction() as session:
        events = (await session.exec(select(AuditEvent))).all()
    issued = [e.detail or {} for e in events if e.action == "token_issued"]
    throttled = sum(detail.get("sources", {}).get("force_throttled", 0) for detail in issued)
    assert throttled == 3


async def test_another_broker_on_the_same_database_is_throttled_too(
    throttled: tuple[Broker, Minting, dict[str, str]],
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
) -> None:
    broker, minting, headers = throttled
    other: Broker = await broker_factory(settings_factory(forced_refresh_interval_seconds=INTERVAL))
    await asyncio.sleep(INTERVAL)
    _, first, _ = await forced(broker, headers)
    _, second, _ = await forced(other, headers)
    assert second.json()["access_token"] == first.json()["access_token"]
    assert len(minting.calls) == 1
    await asyncio.sleep(INTERVAL)
    _, third, _ = await forced(other, headers)
    assert third.json()["access_token"] != first.json()["access_token"]
    assert len(minting.calls) == 2


def test_the_interval_is_a_setting_with_a_default_of_a_few_seconds(
    settings_factory: Callable[..., Settings],
) -> None:
    assert Settings(_env_file=None).forced_refresh_interval_seconds == 5  # type: ignore[call-arg]
    assert settings_factory(forced_refresh_interval_seconds=0).forced_refresh_interval_seconds == 0
