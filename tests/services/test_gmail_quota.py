"""The per-user Gmail quota: bucket math, the concurrency cap, Redis shared by replicas, and the
local fallback while Redis is away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import free_port
from tests.support.redis_server import RedisForTests
from token_broker.kit.keyed_limits import KeyedLimits
from token_broker.kit.token_bucket import TokenBucket
from token_broker.observability.metrics import Metrics
from token_broker.services.gmail_quota import REDIS_RETRY_SECONDS, GmailQuota, QuotaWaitTooLong
from token_broker.settings import Settings
from token_broker.store.redis_buckets import RedisBuckets, redis_client


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def quota_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "gmail_quota_units_per_minute": 600,  # 10 units a second
        "gmail_quota_burst_units": 50,
        "gmail_user_concurrency": 4,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_reservations_wait_their_turn_and_refusals_spend_nothing() -> None:
    time = FakeTime()
    bucket = TokenBucket(10, 50, clock=time)
    assert bucket.reserve(50) == (True, 0.0)
    assert bucket.reserve(5) == (True, 0.5)  # in debt: 0.5 s until those 5 would exist
    assert bucket.reserve(10) == (True, 1.5)
    assert bucket.reserve(100, max_wait=2.0) == (False, 11.5)  # refused, nothing spent
    time.now += 1.5
    assert bucket.reserve(5) == (True, 0.5)
    time.now += 100
    assert bucket.reserve(50) == (True, 0.0)  # refilled to the burst, never beyond
    assert bucket.reserve(1) == (True, 0.1)


async def test_local_quota_paces_every_caller_of_a_user_at_the_rate() -> None:
    time = FakeTime()
    metrics = Metrics()
    quota = GmailQuota(quota_settings(), metrics, clock=time, sleep=time.sleep)
    for _ in range(10):
        await quota.spend("account-1", "messages.get")
    assert time.slept == []  # the burst
    await quota.spend("account-1", "messages.get", 10)  # 50 units: 5 s
    await quota.spend("account-1", "messages.list")
    assert time.slept == [5.0, 0.5]
    await quota.spend("account-2", "messages.get", 10)  # another user: a bucket of its own
    assert time.slept == [5.0, 0.5]
    with pytest.raises(QuotaWaitTooLong) as refused:
        await quota.spend("account-1", "messages.get", 20, max_wait=3)
    assert refused.value.wait == pytest.approx(10.0)
    assert metrics.gmail_quota_units.labels("messages.get")._value.get() == 150
    assert metrics.gmail_quota_wait.labels("messages.get")._value.get() == 5.0


async def test_calls_in_progress_are_capped_per_user_in_arrival_order() -> None:
    limits = KeyedLimits(4)
    order: list[str] = []
    release = asyncio.Event()

    async def call(name: str, weight: int, key: str = "u") -> None:
        async with limits.hold(key, weight):
            order.append(name)
            await release.wait()

    tasks = [asyncio.ensure_future(call("a", 3))]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(call("b", 2)), asyncio.ensure_future(call("c", 1))]
    tasks.append(asyncio.ensure_future(call("other", 4, key="v")))
    await asyncio.sleep(0)
    # b does not fit beside a; c would, but waits its turn behind b.
    assert order == ["a", "other"]
    assert limits.in_progress("u") == 3
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "other", "b", "c"]
    assert limits.in_progress("u") == 0


async def test_a_waiter_that_gives_up_frees_its_turn() -> None:
    limits = KeyedLimits(1)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with limits.hold("u"):
            held.set()
            await release.wait()

    first = asyncio.ensure_future(hold())
    await held.wait()
    waiting = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await first
    async with limits.hold("u"):
        assert limits.in_progress("u") == 1


async def test_replicas_share_one_bucket_in_redis(test_redis: RedisForTests) -> None:
    def replica() -> tuple[GmailQuota, FakeTime]:
        time = FakeTime()
        shared = RedisBuckets(redis_client(test_redis.url, timeout=1), prefix=test_redis.prefix)
        return GmailQuota(quota_settings(), Metrics(), shared=shared, sleep=time.sleep), time

    (first, first_time), (second, second_time) = replica(), replica()
    try:
        await first.spend("account-1", "messages.get", 10)  # the whole burst
        await second.spend("account-1", "messages.get")  # the other replica now waits
        await second.spend("account-1", "messages.get")
        assert first_time.slept == []
        assert second_time.slept[0] == pytest.approx(0.5, abs=0.05)
        assert second_time.slept[1] == pytest.approx(1.0, abs=0.05)
        await second.spend("account-2", "messages.get")  # another user is not held back
        assert len(second_time.slept) == 2
        assert first.status() == second.status() == "ok"
    finally:
        await first.close()
        await second.close()


async def test_calls_in_progress_are_capped_across_replicas(test_redis: RedisForTests) -> None:
    def replica() -> GmailQuota:
        shared = RedisBuckets(redis_client(test_redis.url, timeout=1), prefix=test_redis.prefix)
        return GmailQuota(quota_settings(gmail_user_concurrency=4), Metrics(), shared=shared)

    first, second = replica(), replica()
    entered = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def batch(quota: GmailQuota, name: str, calls: int) -> None:
        async with quota.in_progress("account-1", calls):
            order.append(name)
            entered.set()
            await release.wait()

    try:
        holding = asyncio.ensure_future(batch(first, "first", 3))
        await entered.wait()
        waiting = asyncio.ensure_future(batch(second, "second", 2))
        other_user = second.in_progress("account-2", 4)
        async with other_user:  # another user's places are its own
            pass
        await eventually(lambda: len(order) == 1 and not waiting.done(), within=1)
        release.set()
        await asyncio.gather(holding, waiting)
        assert order == ["first", "second"]
    finally:
        await first.close()
        await second.close()


async def test_redis_away_means_a_local_bucket_at_a_fraction_then_back(
    test_redis: RedisForTests, caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime()
    metrics = Metrics()
    dead = RedisBuckets(redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5),
                        prefix=test_redis.prefix)  # fmt: skip
    quota = GmailQuota(
        quota_settings(gmail_quota_fallback_fraction=0.5), metrics, shared=dead,
        clock=time, sleep=time.sleep,
    )  # fmt: skip
    caplog.set_level(logging.WARNING, "token_broker.gmail_quota")
    for _ in range(5):
        await quota.spend("account-1", "messages.get")  # the fallback burst: 25 units
    await quota.spend("account-1", "messages.get")
    assert time.slept == [1.0]  # 5 units at 5 a second: half the rate
    assert quota.status().startswith("degraded: Redis unreachable")
    assert metrics.gmail_quota_fallback._value.get() == 1
    assert metrics.gmail_quota_redis_errors._value.get() == 1  # not retried every call
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1

    quota.shared = RedisBuckets(redis_client(test_redis.url, timeout=1), prefix=test_redis.prefix)
    time.now += REDIS_RETRY_SECONDS
    await quota.spend("account-1", "messages.get")
    assert quota.status() == "ok"
    assert metrics.gmail_quota_fallback._value.get() == 0
    assert any("answers again" in r.message for r in caplog.records)
    await quota.close()
    await dead.close()


async def test_readyz_says_degraded_but_stays_ready_without_redis(
    broker_factory: Callable[..., Any], settings_factory: Callable[..., Settings]
) -> None:
    password = register_secret("redis-password-0123456789")
    broker = await broker_factory(
        settings_factory(redis_url=f"redis://:{password}@127.0.0.1:{free_port()}/0")
    )
    quota = broker.state.gmail_quota
    await quota.spend(broker.state.settings.google_client_id, "messages.list")
    ready = await broker.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["gmail_quota"].startswith("degraded: Redis unreachable")
    metrics = (await broker.client.get("/metrics")).text
    assert "token_broker_gmail_quota_fallback 1.0" in metrics
    assert password not in ready.text + metrics  # and the run's logs are scanned for it
    assert password not in repr(broker.state.settings)


def test_settings_refuse_a_bad_redis_url() -> None:
    from token_broker.settings import ConfigurationError, load_settings

    with pytest.raises(ConfigurationError) as error:
        load_settings(_env_file=None, redis_url="http://127.0.0.1:6379")
    assert error.value.problems == [
        "TOKEN_BROKER_REDIS_URL: expected a redis://, rediss:// or unix:// URL"
    ]
