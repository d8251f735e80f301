"""Connections that never finish their request cannot take a replica down, and bounding them
refuses no legitimate work. Real sockets against a real broker process.

Attackers open hundreds of connections (more than the process has file descriptors)
and send nothing, or a random prefix of a request head, or of a body, or dribble a
head one byte at a time; meanwhile a fresh health check every tenth of a second must
answer, and every attacker's connection must be closed by the broker within the
configured deadlines. Then a thousand callers at once wait for one slow refresh: all
are served.
"""

from __future__ import annotations

import asyncio
import random
import time
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
from tests.support.hygiene import register_secret
from tests.support.processes import BrokerProcess
from tests.support.provider import Provider
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.store.database import Database, create_engine
from token_broker.store.models import Account

HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
FD_LIMIT = 256
ATTACKERS = 400  # more than the process may hold open
REQUESTS = [
    b"GET /healthz HTTP/1.1\r\nHost: broker\r\nUser-Agent: slow\r\n\r\n",
    b"GET /v1/accounts?limit=10 HTTP/1.1\r\nHost: broker\r\nX-Padding: "
    + b"a" * 2000
    + b"\r\n\r\n",
    b"POST /v1/authorizations HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\n"
    b"Content-Length: 200\r\n\r\n" + b'{"login_hint": "' + b"a" * 180 + b'"}',
]

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


class Attacker:
    """One connection that will not finish its request."""

    def __init__(self, rng: random.Random) -> None:
        self.kind = rng.choice(["silent", "prefix", "prefix", "dribble"])
        request = rng.choice(REQUESTS)
        self.prefix = (
            b"" if self.kind == "silent" else request[: rng.randrange(1, len(request) - 1)]
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.closed_after: float | None = None

    async def attack(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        opened = time.monotonic()
        try:
            self.reader, self.writer = await asyncio.open_connection(host, int(port))
            if self.kind == "dribble":
                for byte in self.prefix:
                    self.writer.write(bytes([byte]))
                    await self.writer.drain()
                    await asyncio.sleep(0.25)  # the attack's pace, not synchronisation
            else:
                self.writer.write(self.prefix)
                await self.writer.drain()
            await self.reader.read()  # until the broker closes it
        except (ConnectionError, OSError):
            pass
        self.closed_after = time.monotonic() - opened

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def health(url: str) -> int:
    async with httpx.AsyncClient(timeout=3) as client:
        try:
            return (await client.get(f"{url}/healthz")).status_code
        except httpx.TransportError as error:
            return -len(type(error).__name__)


@pytest.mark.parametrize("seed", [1, 2])
async def test_held_connections_are_closed_and_health_keeps_answering(
    cli_env: dict[str, str], seed: int
) -> None:
    env = {
        **cli_env,
        "TOKEN_BROKER_REQUEST_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "TOKEN_BROKER_REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    }
    broker = BrokerProcess(env, name="held-connections", fd_limit=FD_LIMIT)
    attackers = [Attacker(random.Random(seed * 1000 + n)) for n in range(ATTACKERS)]
    try:
        await broker.ready()
        attacks = [asyncio.create_task(a.attack(broker.url)) for a in attackers]
        checks = []
        loop = asyncio.get_running_loop()
        until = loop.time() + 2 * HEAD_TIMEOUT
        while loop.time() < until:
            checks.append(await health(broker.url))
            await asyncio.sleep(0.1)  # the health checker's own pace
        assert set(checks) == {200}, checks
        # A dribbled head may take its whole deadline; nothing lives longer than
        # head + body deadline, whatever it sent.
        await asyncio.wait_for(asyncio.gather(*attacks), HEAD_TIMEOUT + BODY_TIMEOUT + 10)
        lasted = max(a.closed_after or 0.0 for a in attackers)
        assert lasted < HEAD_TIMEOUT + BODY_TIMEOUT + 3, lasted
        kinds = {a.kind for a in attackers}
        assert kinds == {"silent", "prefix", "dribble"}
        assert await health(broker.url) == 200
    finally:
        for attacker in attackers:
            attacker.stop()
        broker.close()


@pytest.fixture
async def serving(
    provider: Provider, database_url: str
) -> AsyncIterator[tuple[BrokerProcess, str]]:
    """A broker process on the sandbox, with alice connected; its url and an API key."""
    database = Database(create_engine(database_url))
    _, key = await ClientService(database).create("crowd", [p.value for p in Permission])
    await database.dispose()
    register_secret(key)
    env = {
        "TOKEN_BROKER_DATABASE_URL": database_url,
        **{f"TOKEN_BROKER_{k.upper()}": str(v) for k, v in provider.settings().items()},
    }
    env |= {
        "TOKEN_BROKER_ENCRYPTION_KEYS": TEST_KEYS,
        "TOKEN_BROKER_GOOGLE_CLIENT_ID": TEST_CLIENT_ID,
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": TEST_CLIENT_SECRET,
        "TOKEN_BROKER_REDIRECT_URI": TEST_REDIRECT_URI,
    }
    broker = BrokerProcess(env, name="crowd")
    try:
        await broker.ready()
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=30) as http:
            started = await http.post(
                f"{broker.url}/v1/authorizations", json={"login_hint": "alice@example.com"},
                headers=headers,
            )  # fmt: skip
            answer = await consent(http, started.json()["authorization_url"])
            register_secret(answer["code"])
            callback = await http.get(
                f"{broker.url}/v1/oauth/callback",
                params={"code": answer["code"], "state": answer["state"]},
            )
            assert callback.status_code == 200, callback.text
        yield broker, key
    finally:
        broker.close()


async def test_a_thousand_requests_in_flight_are_all_served(
    serving: tuple[BrokerProcess, str], provider: Provider, database_url: str
) -> None:
    broker, key = serving
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(Account).values(access_token_expires_at=utcnow() + timedelta(seconds=5))
        )
    await engine.dispose()
    provider.state.calls.clear()
    provider.state.faults.append(FaultRule("token", kind="latency", delay=3, times=1))
    limits = httpx.Limits(max_connections=1100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as crowd:
        sent: list[float] = []
        done: list[float] = []

        async def ask() -> httpx.Response:
            sent.append(time.monotonic())
            response = await crowd.get(
                f"{broker.url}/v1/accounts/alice@example.com/access-token",
                headers={"Authorization": f"Bearer {key}"},
            )
            done.append(time.monotonic())
            return response

        answers: list[Any] = await asyncio.gather(*(ask() for _ in range(1000)))
    assert [a.status_code for a in answers] == [200] * 1000
    tokens = {a.json()["access_token"] for a in answers}
    for token in tokens:
        register_secret(token)
    assert len(tokens) == 1
    assert provider.state.calls["token:refresh_token"] == 1
    assert max(sent) < min(done)  # all thousand were in flight at once
