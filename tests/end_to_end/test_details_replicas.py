"""Two broker processes on Postgres and Redis, fetching details of one user's mailbox at once,
against the sandbox enforcing Gmail's per-user quota: no rate-limit answer, the combined rate
within the quota; and Redis going away mid-listing: the listing completes at the reduced rate.

Redis is reached through a proxy the test can stop, so the Redis other tests share never is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from google_sandbox.quota import QuotaSettings
from tests.end_to_end import test_replicas
from tests.end_to_end.test_replicas import Fleet
from tests.support.polling import eventually
from tests.support.processes import BrokerProcess
from tests.support.redis_server import RedisForTests
from tests.support.tcp_proxy import TcpProxy

fleet = test_replicas.fleet  # the fixtures, shared
pg_url = test_replicas.pg_url
RATE = 120_000  # units a minute: 2,000 a second, so the test takes seconds
BROKER_BURST = 250


@pytest.fixture
async def redis_proxy(test_redis: RedisForTests) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(test_redis.host, test_redis.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def replicas(
    fleet: Fleet, proxy: TcpProxy, test_redis: RedisForTests, count: int
) -> list[BrokerProcess]:
    env = {
        **fleet.env(),
        "TOKEN_BROKER_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
        "TOKEN_BROKER_REDIS_KEY_PREFIX": test_redis.prefix,
        "TOKEN_BROKER_GMAIL_QUOTA_UNITS_PER_MINUTE": str(RATE),
        "TOKEN_BROKER_GMAIL_QUOTA_BURST_UNITS": str(BROKER_BURST),
        "TOKEN_BROKER_GMAIL_QUOTA_FALLBACK_FRACTION": "0.5",
        "TOKEN_BROKER_GMAIL_BACKOFF_SECONDS": "0.1",
        "TOKEN_BROKER_LOG_LEVEL": "INFO",
    }
    started = [BrokerProcess(env, name=f"details-replica{i}") for i in range(count)]
    fleet.replicas += started
    await asyncio.gather(*(replica.ready() for replica in started))
    return started


def enforce_gmail_quota(fleet: Fleet) -> None:
    # Gmail's side at the same rate; its burst a little above the broker's, as Gmail's
    # moving average tolerates short bursts.
    fleet.provider.state.quota.configure(
        QuotaSettings(units_per_minute=RATE, burst_units=500, concurrent_limit=64)
    )


async def listing(fleet: Fleet, replica: BrokerProcess, subject: str) -> list[dict[str, Any]]:
    response = await fleet.http.get(
        f"{replica.url}/v1/accounts/{subject}/messages",
        params={"format": "metadata", "metadataHeaders": "Subject", "includeSpamTrash": "true"},
        headers={**fleet.headers, "Accept": "application/x-ndjson"},
        timeout=120,
    )
    assert response.status_code == 200
    return [json.loads(line) for line in response.text.splitlines()]


async def test_two_replicas_share_the_quota_through_redis(
    fleet: Fleet, redis_proxy: TcpProxy, test_redis: RedisForTests
) -> None:
    a, b = await replicas(fleet, redis_proxy, test_redis, 2)
    fleet.provider.state.add_user("alice@example.com", mailbox_size=1000)
    subject = await fleet.connect(a)
    enforce_gmail_quota(fleet)
    started = time.monotonic()
    first, second = await asyncio.gather(listing(fleet, a, subject), listing(fleet, b, subject))
    elapsed = time.monotonic() - started
    for lines in (first, second):
        assert lines[-1]["status"] == "complete"
        assert lines[-1]["fetched"] == 1000
    report = fleet.provider.state.quota.report()
    assert report["rate_limited"] == 0
    assert report["concurrency_limited"] == 0
    spent = report["spent"]["alice@example.com"]
    assert spent == 2 * (1000 * 5 + 2 * 5)
    # Together within the quota: the broker's burst, then the rate.
    assert spent <= BROKER_BURST + RATE / 60 * elapsed + 50
    for replica in (a, b):
        ready = (await fleet.http.get(f"{replica.url}/readyz")).json()
        assert ready["checks"]["gmail_quota"] == "ok"


async def test_redis_stopped_mid_listing(
    fleet: Fleet, redis_proxy: TcpProxy, test_redis: RedisForTests
) -> None:
    (a,) = await replicas(fleet, redis_proxy, test_redis, 1)
    fleet.provider.state.add_user("alice@example.com", mailbox_size=3000)
    subject = await fleet.connect(a)
    enforce_gmail_quota(fleet)
    quota = fleet.provider.state.quota
    url = f"{a.url}/v1/accounts/{subject}/messages"
    params = {"format": "minimal", "includeSpamTrash": "true"}
    headers = {**fleet.headers, "Accept": "application/x-ndjson"}
    lines = 0
    stopped_at = spent_at_stop = 0.0
    final: dict[str, Any] = {}
    async with fleet.http.stream(
        "GET", url, params=params, headers=headers, timeout=120
    ) as response:
        async for line in response.aiter_lines():
            lines += 1
            if lines == 500:
                await redis_proxy.stop()
                stopped_at = time.monotonic()
                spent_at_stop = quota.spent["alice@example.com"]
            final = json.loads(line)
    finished = time.monotonic()
    assert final["status"] == "complete"
    assert final["fetched"] == 3000
    assert quota.refused["rate"] == 0
    # After the stop, a local bucket at half the rate (and half the burst).
    spent_after = quota.spent["alice@example.com"] - spent_at_stop
    assert spent_after <= BROKER_BURST / 2 + RATE / 60 / 2 * (finished - stopped_at) + 300
    ready = (await fleet.http.get(f"{a.url}/readyz")).json()
    assert ready["status"] == "ready"
    assert ready["checks"]["gmail_quota"].startswith("degraded: Redis unreachable")
    metrics = (await fleet.http.get(f"{a.url}/metrics")).text
    assert "token_broker_gmail_quota_fallback 1.0" in metrics

    # Redis back: the next Gmail call finds it again (after the retry interval).
    await redis_proxy.start_again()

    async def recovered() -> bool:
        await fleet.http.get(f"{a.url}/v1/accounts/{subject}/messages", params={"limit": 1},
                             headers=fleet.headers)  # fmt: skip
        ready = (await fleet.http.get(f"{a.url}/readyz")).json()
        return bool(ready["checks"]["gmail_quota"] == "ok")

    await eventually(recovered, within=15, interval=0.5)
