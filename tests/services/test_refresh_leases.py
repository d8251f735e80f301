"""The refresh lease: no connection held while the provider is called, storms queue for a
bounded number of upstream refreshes, and a lease another replica holds is waited for,
used, or taken over when it expires. Both databases; the token endpoint pinned with respx.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlmodel import select

from tests.support.brokers import Broker
from tests.support.google_fakes import form, token_body
from tests.support.polling import eventually
from tests.support.seeding import Seed, insert_accounts
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.store.change_feed import CHANNEL, payload
from token_broker.store.models import Account
from token_broker.store.repositories import ChangeNotices

EXPIRED = -60


def seeds(count: int) -> list[Seed]:
    return [
        Seed(f"1{index:020d}", f"user{index}@example.com", f"1//seed-{index}", f"ya29.old-{index}")
        for index in range(count)
    ]


def fresh_token_for(refresh_token: str) -> str:
    return "ya29.fresh-" + refresh_token.removeprefix("1//seed-")


class TokenEndpoint:
    """A token endpoint that answers each refresh token with its own new access token,
    after `delay`, counting calls per refresh token and the most at once."""

    def __init__(self, upstream: respx.MockRouter, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.route = upstream.post("/token")
        self.route.side_effect = self.answer
        self.before: Callable[[], Any] | None = None

    async def answer(self, request: httpx.Request) -> httpx.Response:
        refresh_token = form(request)["refresh_token"]
        self.calls[refresh_token] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.before is not None:
                await self.before()
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        body = token_body(access_token=fresh_token_for(refresh_token), refresh_token=None)
        return httpx.Response(200, json=body)


async def token(broker: Broker, headers: dict[str, str], subject: str, **params: Any) -> Any:
    return await broker.client.get(
        f"/v1/accounts/{subject}/access-token", params=params, headers=headers
    )


async def stored(broker: Broker, subject: str) -> Account:
    async with broker.state.database.transaction() as session:
        return (await session.exec(select(Account).where(Account.subject == subject))).one()


async def set_lease(
    broker: Broker, subject: str, lease_id: str | None, until: datetime | None
) -> None:
    """Another replica's lease (or, without an id, a cool-down) on the account's row."""
    async with broker.state.database.transaction() as session:
        account = (await session.exec(select(Account).where(Account.subject == subject))).one()
        account.refresh_lease_id = lease_id
        account.refresh_lease_until = until
        session.add(account)


@pytest.fixture
async def reader(broker: Broker) -> dict[str, str]:
    return await broker.headers(Permission.TOKENS_READ)


async def test_the_provider_is_called_with_no_connection_checked_out(
    broker: Broker, database_url: str, upstream: respx.MockRouter, reader: dict[str, str]
) -> None:
    (seed,) = seeds(1)
    await insert_accounts(database_url, [seed])
    endpoint = TokenEndpoint(upstream)
    checked_out: list[int] = []
    pool = broker.state.database.engine.pool

    async def look_at_the_pool() -> None:
        checked_out.append(pool.checkedout())  # type: ignore[attr-defined]

    endpoint.before = look_at_the_pool
    response = await token(broker, reader, seed.subject, force_refresh="true")
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == fresh_token_for(seed.refresh_token)
    assert checked_out == [0]
    after = await stored(broker, seed.subject)
    assert (after.refresh_lease_id, after.refresh_lease_until) == (None, None)


async def test_a_storm_larger_than_the_pool_queues_for_bounded_refreshes(
    broker_factory: Any, settings_factory: Any, database_url: str, upstream: respx.MockRouter
) -> None:
    broker = await broker_factory(
        settings_factory(
            db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=2, refresh_concurrency=4
        )
    )
    accounts = seeds(30)
    await insert_accounts(database_url, accounts, expires_in=EXPIRED)
    endpoint = TokenEndpoint(upstream, delay=0.2)  # long enough for the slots to fill
    headers = await broker.headers(Permission.TOKENS_READ)

    responses = await asyncio.gather(
        *(token(broker, headers, seed.subject) for seed in accounts for _ in range(3))
    )
    assert [r.status_code for r in responses] == [200] * 90, {r.text for r in responses}
    for index, seed in enumerate(accounts):
        answers = {r.json()["access_token"] for r in responses[index * 3 : index * 3 + 3]}
        assert answers == {fresh_token_for(seed.refresh_token)}
    assert endpoint.calls == Counter({seed.refresh_token: 1 for seed in accounts})
    assert endpoint.most_in_flight == 4


async def test_a_lease_held_elsewhere_is_waited_for_and_its_token_used(
    broker: Broker,
    database_url: str,
    upstream: respx.MockRouter,
    reader: dict[str, str],
    backend: str,
) -> None:
    (seed,) = seeds(1)
    await insert_accounts(database_url, [seed], expires_in=EXPIRED)
    endpoint = TokenEndpoint(upstream)
    await set_lease(broker, seed.subject, "another-replica", utcnow() + timedelta(seconds=30))
    waiting = asyncio.create_task(token(broker, reader, seed.subject))
    leases = broker.state.tokens.leases
    await eventually(lambda: leases._watchers, within=5)

    # The other replica stores its token and releases the lease, as `settle` does.
    keyring = broker.state.keyring
    async with broker.state.database.transaction() as session:
        account = (await session.exec(select(Account).where(Account.subject == seed.subject))).one()
        account.access_token = keyring.seal(
            "ya29.from-elsewhere", column=Account.ACCESS_TOKEN, row=account.id
        )
        account.access_token_expires_at = utcnow() + timedelta(hours=1)
        account.last_refreshed_at = utcnow()
        account.refresh_lease_id = account.refresh_lease_until = None
        session.add(account)
        await ChangeNotices(session).send(CHANNEL, payload("lease", account.id))

    response = await asyncio.wait_for(waiting, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == "ya29.from-elsewhere"
    assert sum(endpoint.calls.values()) == 0


async def test_an_expired_lease_is_taken_over(
    broker: Broker, database_url: str, upstream: respx.MockRouter, reader: dict[str, str]
) -> None:
    (seed,) = seeds(1)
    await insert_accounts(database_url, [seed], expires_in=EXPIRED)
    endpoint = TokenEndpoint(upstream)
    called_at: list[datetime] = []

    async def note_the_time() -> None:
        called_at.append(utcnow())

    endpoint.before = note_the_time
    # A holder that died: its lease runs out in a second and a half.
    lease_until = utcnow() + timedelta(seconds=1.5)
    await set_lease(broker, seed.subject, "a-dead-replica", lease_until)

    response = await token(broker, reader, seed.subject)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == fresh_token_for(seed.refresh_token)
    assert len(called_at) == 1
    assert called_at[0] >= lease_until  # never while the other lease was live
    after = await stored(broker, seed.subject)
    assert (after.refresh_lease_id, after.refresh_lease_until) == (None, None)


async def test_a_failed_refresh_cools_the_account_down_for_every_replica(
    broker_factory: Any, settings_factory: Any, database_url: str, upstream: respx.MockRouter
) -> None:
    settings = settings_factory(refresh_attempts=1, refresh_cooldown_seconds=30)
    first, second = await broker_factory(settings), await broker_factory(settings)
    (seed,) = seeds(1)
    await insert_accounts(database_url, [seed], expires_in=EXPIRED)
    route = upstream.post("/token").respond(503, json={"error": "internal_failure"})

    failed = await token(first, await first.headers(Permission.TOKENS_READ), seed.subject)
    assert failed.status_code == 503
    assert route.call_count == 1
    cooling = await stored(first, seed.subject)
    assert cooling.refresh_lease_id is None
    assert cooling.refresh_lease_until is not None
    assert cooling.refresh_lease_until > utcnow() + timedelta(seconds=25)

    # Another replica's callers fail fast too, without calling the provider.
    elsewhere = await token(second, await second.headers(Permission.TOKENS_READ), seed.subject)
    assert elsewhere.status_code == 503
    assert elsewhere.json()["code"] == "upstream_unavailable"
    assert 25 <= int(elsewhere.headers["retry-after"]) <= 30
    assert route.call_count == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=token_body(refresh_token=None)),
        httpx.Response(400, json={"error": "invalid_grant"}),
        httpx.Response(400, json={"error": "invalid_grant", "error_subtype": "invalid_rapt"}),
        httpx.Response(401, json={"error": "invalid_client"}),
    ],
    ids=["ok", "dead-grant", "session-policy", "rejected-client"],
)
async def test_the_lease_is_released_whatever_the_answer(
    broker: Broker,
    database_url: str,
    upstream: respx.MockRouter,
    reader: dict[str, str],
    answer: httpx.Response,
) -> None:
    (seed,) = seeds(1)
    await insert_accounts(database_url, [seed])
    upstream.post("/token").mock(return_value=answer)
    await token(broker, reader, seed.subject, force_refresh="true")
    after = await stored(broker, seed.subject)
    assert (after.refresh_lease_id, after.refresh_lease_until) == (None, None)


async def test_a_refresh_that_would_outlast_its_lease_stops_before_it_runs_out(
    broker_factory: Any, settings_factory: Any, database_url: str, upstream: respx.MockRouter
) -> None:
    broker = await broker_factory(
        settings_factory(refresh_lease_seconds=5, refresh_budget_seconds=3)
    )
    (seed,) = seeds(1)
    await insert_accounts(database_url, [seed])
    lease_until: list[datetime] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        lease = (await stored(broker, seed.subject)).refresh_lease_until
        assert lease is not None
        lease_until.append(lease)
        await asyncio.sleep(60)
        raise AssertionError("the call should have been cut short")

    upstream.post("/token").mock(side_effect=hang)
    headers = await broker.headers(Permission.TOKENS_READ)
    response = await token(broker, headers, seed.subject, force_refresh="true")
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert utcnow() < lease_until[0]  # given up while the lease was still ours
    after = await stored(broker, seed.subject)
    assert after.refresh_lease_id is None  # released, into a cool-down


async def test_the_keepalive_sweep_refreshes_with_half_the_slots(
    broker_factory: Any, settings_factory: Any, database_url: str, upstream: respx.MockRouter
) -> None:
    broker = await broker_factory(settings_factory(refresh_concurrency=8))
    accounts = seeds(12)
    await insert_accounts(database_url, accounts)
    async with broker.state.database.transaction() as session:
        for account in (await session.exec(select(Account))).all():
            account.last_refreshed_at = utcnow() - timedelta(days=40)
            session.add(account)
    endpoint = TokenEndpoint(upstream, delay=0.2)  # long enough for the slots to fill

    report = await broker.state.keepalive.sweep()
    assert dict(report.outcomes) == {"refreshed": 12}
    assert endpoint.calls == Counter({seed.refresh_token: 1 for seed in accounts})
    assert endpoint.most_in_flight == 4
