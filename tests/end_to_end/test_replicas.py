"""Several broker processes on one Postgres database, against the sandbox on loopback.

These are the fleet-wide promises: one upstream refresh per expiry however many
callers and replicas ask, over one account or many (more than the connection pools
hold), against a rotating provider that kills replayed grants; a process killed
mid-refresh frees its lease; deletions reach every replica's cache at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from google_sandbox.browser import consent
from google_sandbox.records import FaultRule
from tests.support.brokers import TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_KEYS, TEST_REDIRECT_URI
from tests.support.databases import truncate_all
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import BrokerProcess
from tests.support.provider import Provider
from tests.support.seeding import seed_at_sandbox
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.store.database import Database, create_engine
from token_broker.store.models import Account


@pytest.fixture
async def pg_url(postgres_url: str | None) -> AsyncIterator[str]:
    if postgres_url is None:
        pytest.skip("Postgres is not reachable")
    yield postgres_url
    await truncate_all(postgres_url)


class Fleet:
    def __init__(self, provider: Provider, url: str, http: httpx.AsyncClient) -> None:
        self.provider = provider
        self.url = url
        self.http = http
        self.replicas: list[BrokerProcess] = []
        self.key = ""

    def env(self, **extra: Any) -> dict[str, str]:
        settings = {
            "DATABASE_URL": self.url,
            "ENCRYPTION_KEYS": TEST_KEYS,
            "GOOGLE_CLIENT_ID": TEST_CLIENT_ID,
            "GOOGLE_CLIENT_SECRET": TEST_CLIENT_SECRET,
            "REDIRECT_URI": TEST_REDIRECT_URI,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "DEBUG",
            "LOCK_TIMEOUT_SECONDS": "20",
            # Forced refreshes test the refresh core; their throttle is tested with it on.
            "FORCED_REFRESH_INTERVAL_SECONDS": "0",
            **{k.upper(): str(v) for k, v in self.provider.settings().items()},
            **{k.upper(): str(v) for k, v in extra.items()},
        }
        return {f"TOKEN_BROKER_{k}": v for k, v in settings.items()}

    async def start(self, count: int, **settings: Any) -> list[BrokerProcess]:
        started = [BrokerProcess(self.env(**settings), name=f"replica{i}") for i in range(count)]
        self.replicas += started
        await asyncio.gather(*(replica.ready() for replica in started))
        return started

    async def api_key(self) -> str:
        database = Database(create_engine(self.url))
        try:
            _, key = await ClientService(database).create(
                "fleet-test", [p.value for p in Permission]
            )
        finally:
            await database.dispose()
        self.key = register_secret(key)
        return key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def connect(self, replica: BrokerProcess, email: str = "alice@example.com") -> str:
        started = await self.http.post(
            f"{replica.url}/v1/authorizations", json={"login_hint": email}, headers=self.headers
        )
        answer = await consent(self.http, started.json()["authorization_url"], email=email)
        register_secret(answer["code"])
        callback = await self.http.get(
            f"{replica.url}/v1/oauth/callback",
            params={"code": answer["code"], "state": answer["state"]},
        )
        assert callback.status_code == 200, callback.text
        return str(self.provider.state.users[email].sub)

    async def age_stored_token(self, seconds_left: int = 5) -> None:
        engine = create_async_engine(self.url)
        async with engine.begin() as connection:
            await connection.execute(
                sa.update(Account).values(
                    access_token_expires_at=utcnow() + timedelta(seconds=seconds_left)
                )
            )
        await engine.dispose()

    async def stored(self) -> dict[str, Any]:
        engine = create_async_engine(self.url)
        async with engine.connect() as connection:
            row = (await connection.execute(sa.select(Account.__table__))).mappings().one()  # type: ignore[attr-defined]
        await engine.dispose()
        return dict(row)

    async def token(self, replica: BrokerProcess, subject: str, **params: Any) -> httpx.Response:
        return await self.http.get(
            f"{replica.url}/v1/accounts/{subject}/access-token", params=params, headers=self.headers
        )


@pytest.fixture
async def fleet(provider: Provider, pg_url: str) -> AsyncIterator[Fleet]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        fleet = Fleet(provider, pg_url, http)
        await fleet.api_key()
        try:
            yield fleet
        finally:
            for replica in fleet.replicas:
                replica.close()


@pytest.mark.parametrize("rotating", [False, True], ids=["google", "rotating-provider"])
async def test_a_storm_on_two_replicas_makes_one_refresh(fleet: Fleet, rotating: bool) -> None:
    a, b = await fleet.start(2)
    subject = await fleet.connect(a)
    fleet.provider.state.rotate_refresh_tokens = rotating
    await fleet.age_stored_token()
    fleet.provider.state.calls.clear()

    responses = await asyncio.gather(
        *(fleet.token(replica, subject) for _ in range(100) for replica in (a, b))
    )
    assert [r.status_code for r in responses] == [200] * 200
    tokens = {r.json()["access_token"] for r in responses}
    assert len(tokens) == 1
    register_secret(tokens.pop())
    assert fleet.provider.state.calls["token:refresh_token"] == 1

    # Both replicas keep working with whatever refresh token is stored now; with a
    # rotating provider a replayed old one would have killed the grant.
    for replica in (b, a):
        forced = await fleet.token(replica, subject, force_refresh="true")
        assert forced.status_code == 200, forced.text
        register_secret(forced.json()["access_token"])
    assert fleet.provider.state.calls["token:refresh_token"] == 3
    assert (await fleet.stored())["status"] == "active"
    assert all(not grant.revoked for grant in fleet.provider.state.grants.values())


async def test_a_storm_over_more_accounts_than_the_pools_hold(fleet: Fleet) -> None:
    """Two processes, a provider that rotates refresh tokens (a replayed one kills the
    grant), pools of two connections, and forty accounts expiring together."""
    accounts = 40
    a, b = await fleet.start(
        2,
        db_pool_size=2,
        db_max_overflow=0,
        db_pool_timeout_seconds=1,
        refresh_concurrency=4,
        lock_timeout_seconds=5,
    )
    subjects = await seed_at_sandbox(fleet.url, fleet.provider, accounts, expires_in=-60)
    fleet.provider.state.rotate_refresh_tokens = True
    fleet.provider.state.faults.append(FaultRule("token", kind="latency", delay=0.1))
    fleet.provider.state.calls.clear()

    callers = [(replica, subject) for subject in subjects for replica in (a, b, a, b)]
    responses = await asyncio.gather(*(fleet.token(r, subject) for r, subject in callers))
    assert [r.status_code for r in responses] == [200] * len(callers), {
        r.text for r in responses if r.status_code != 200
    }
    for index in range(accounts):
        tokens = {r.json()["access_token"] for r in responses[index * 4 : index * 4 + 4]}
        assert len(tokens) == 1
        register_secret(tokens.pop())
    assert fleet.provider.state.calls["token:refresh_token"] == accounts
    assert not any(grant.revoked for grant in fleet.provider.state.grants.values())
    # What each replica stored is the grant's current refresh token: both keep working.
    fleet.provider.state.faults.clear()
    for replica, subject in [(b, subjects[0]), (a, subjects[0]), (a, subjects[-1])]:
        forced = await fleet.token(replica, subject, force_refresh="true")
        assert forced.status_code == 200, forced.text
        register_secret(forced.json()["access_token"])
    assert not any(grant.revoked for grant in fleet.provider.state.grants.values())


async def stored_lease(url: str, subject: str) -> tuple[str | None, Any]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                sa.select(Account.refresh_lease_id, Account.refresh_lease_until).where(
                    Account.subject == subject
                )
            )
        ).one()
    await engine.dispose()
    return row[0], row[1]


async def test_a_holder_killed_mid_refresh_frees_its_lease(fleet: Fleet) -> None:
    a, b = await fleet.start(2, refresh_lease_seconds=5, refresh_budget_seconds=2)
    subject = await fleet.connect(a)
    before = await fleet.stored()
    fleet.provider.state.call_log.clear()
    stall = FaultRule("token", kind="latency", delay=30, times=1)
    fleet.provider.state.faults.append(stall)

    stuck = asyncio.create_task(fleet.token(a, subject, force_refresh="true"))
    await eventually(lambda: stall.hits == 1, within=10)  # A holds the lease, mid-call
    lease_id, lease_until = await stored_lease(fleet.url, subject)
    assert lease_id is not None
    waiting = asyncio.create_task(fleet.token(b, subject, force_refresh="true"))
    a.kill()
    with pytest.raises(httpx.TransportError):
        await stuck

    # B waited for A's lease to run out, then refreshed: one call, after the expiry.
    response = await asyncio.wait_for(waiting, timeout=20)
    assert response.status_code == 200, response.text
    register_secret(response.json()["access_token"])
    refreshed = [call for call in fleet.provider.state.calls_to("token") if call.status == 200]
    assert len(refreshed) == 1
    after = await fleet.stored()
    assert after["status"] == "active"
    assert after["refresh_token"] == before["refresh_token"]
    assert after["last_refreshed_at"] >= lease_until
    assert (after["refresh_lease_id"], after["refresh_lease_until"]) == (None, None)


async def test_forced_refreshes_on_two_replicas_make_one_refresh_per_interval(
    fleet: Fleet,
) -> None:
    a, b = await fleet.start(2, FORCED_REFRESH_INTERVAL_SECONDS="1")
    subject = await fleet.connect(a)
    fleet.provider.state.calls.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers: list[httpx.Response] = []
    while loop.time() - started < 3:
        answers += await asyncio.gather(
            *(
                fleet.token(replica, subject, force_refresh="true")
                for _ in range(25)
                for replica in (a, b)
            )
        )
    elapsed = loop.time() - started
    assert {response.status_code for response in answers} == {200}
    for token in {response.json()["access_token"] for response in answers}:
        register_secret(token)
    refreshes = fleet.provider.state.calls["token:refresh_token"]
    assert 1 <= refreshes <= int(elapsed) + 1, (refreshes, elapsed, len(answers))


async def test_deletion_reaches_every_replica_promptly(fleet: Fleet) -> None:
    a, b = await fleet.start(2)
    subject = await fleet.connect(a)
    warm = await fleet.token(b, subject)
    assert warm.status_code == 200
    register_secret(warm.json()["access_token"])
    assert (await fleet.token(b, subject)).status_code == 200  # served from B's cache

    deleted = await fleet.http.delete(f"{a.url}/v1/accounts/{subject}", headers=fleet.headers)
    assert deleted.json() == {"deleted": True, "upstream_revoked": True}

    async def gone_from_b() -> bool:
        return (await fleet.token(b, subject)).status_code == 404

    await eventually(gone_from_b, within=2)


async def test_revoked_api_key_stops_at_every_replica_promptly(fleet: Fleet) -> None:
    a, b = await fleet.start(2)
    for replica in (a, b):
        listed = await fleet.http.get(f"{replica.url}/v1/accounts", headers=fleet.headers)
        assert listed.status_code == 200
    database = Database(create_engine(fleet.url))
    await ClientService(database).revoke("fleet-test")
    await database.dispose()

    async def refused_everywhere() -> bool:
        statuses = [
            (await fleet.http.get(f"{r.url}/v1/accounts", headers=fleet.headers)).status_code
            for r in (a, b)
        ]
        return statuses == [401, 401]

    await eventually(refused_everywhere, within=2)


async def test_metrics_add_up_across_workers(fleet: Fleet) -> None:
    replica = BrokerProcess(fleet.env(), name="workers", workers=2)
    fleet.replicas.append(replica)
    await replica.ready()
    close = {"Connection": "close"}  # new connections, so both workers take some
    for _ in range(60):
        assert (await fleet.http.get(f"{replica.url}/healthz", headers=close)).status_code == 200

    async def healthz_count() -> float:
        scraped = (await fleet.http.get(f"{replica.url}/metrics", headers=close)).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("token_broker_http_requests_total{") and 'route="/healthz"' in line
        )

    # Whichever worker answers the scrape, it reports the requests of both.
    counts = [await healthz_count() for _ in range(6)]
    assert min(counts) >= 60, counts
