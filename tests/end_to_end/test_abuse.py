"""Caller abuse: rate limits, key spraying, no account enumeration, a pool that runs dry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.brokers import Broker
from tests.support.google_fakes import SUBJECT
from token_broker.kit.rate_limit import RateLimiter
from token_broker.services.api_keys import Permission, hash_api_key
from token_broker.settings import Settings


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") is None  # buckets are per key
    now[0] += 0.5
    assert limiter.take("a") is None
    assert RateLimiter(0, 1).take("a") is None  # 0: off


async def test_each_client_is_limited_on_its_own(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    broker = await broker_factory(settings_factory(rate_limit_per_second=1, rate_limit_burst=5))
    noisy = await broker.headers(Permission.ACCOUNTS_READ)
    quiet = await broker.headers(Permission.ACCOUNTS_READ)
    statuses = [
        (await broker.client.get("/v1/accounts", headers=noisy)).status_code for _ in range(8)
    ]
    assert statuses[:5] == [200] * 5
    assert set(statuses[5:]) == {429}
    limited = await broker.client.get("/v1/accounts", headers=noisy)
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert (await broker.client.get("/v1/accounts", headers=quiet)).status_code == 200
    # The token fast path applies the same limit.
    token = await broker.client.get(f"/v1/accounts/{SUBJECT}/access-token", headers=noisy)
    assert token.status_code in (403, 429)


async def test_spraying_random_keys_costs_a_bounded_number_of_queries(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    broker = await broker_factory(settings_factory(key_lookups_per_second=5))
    statuses = []
    for index in range(30):
        key = f"tbk_{index:043d}"
        response = await broker.client.get(
            "/v1/accounts", headers={"Authorization": f"Bearer {key}"}
        )
        statuses.append(response.status_code)
    assert statuses.count(401) == 10  # the burst: 2 x 5 lookups
    assert statuses.count(429) == 20  # then refused without touching the database
    known = await broker.headers(Permission.ACCOUNTS_READ)
    # A known key cached earlier is unaffected; a new one waits for the bucket.
    assert (await broker.client.get("/v1/accounts", headers=known)).status_code in (200, 429)


async def test_no_enumeration_through_different_errors(connected: Broker) -> None:
    broker = connected
    unprivileged = await broker.headers(Permission.MESSAGES_READ)
    answers = []
    for account in (SUBJECT, "alice@example.com", "nobody@example.com", "123"):
        for path in (f"/v1/accounts/{account}", f"/v1/accounts/{account}/access-token"):
            response = await broker.client.get(path, headers=unprivileged)
            body = response.json()
            body.pop("request_id")
            answers.append((response.status_code, body))
    assert all(answer == answers[0] for answer in answers[::2])
    assert all(answer == answers[1] for answer in answers[1::2])
    assert {status for status, _ in answers} == {403}


def test_keys_are_found_by_their_hash() -> None:
    """Keys are never compared as secrets: the hash is the lookup key (see auth.py), so
    a wrong key's timing says nothing about the right one."""
    key = "tbk_" + "a" * 43
    assert hash_api_key(key) == hash_api_key(key)
    assert hash_api_key(key) != hash_api_key(key[:-1] + "b")
    assert len(hash_api_key(key)) == 64


async def test_an_exhausted_pool_fails_fast_with_503(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    broker = await broker_factory(
        settings_factory(db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.5)
    )
    headers = await broker.headers(Permission.ACCOUNTS_READ)
    assert (await broker.client.get("/v1/accounts", headers=headers)).status_code == 200
    async with broker.state.database.engine.connect():  # a slow request holds the only one
        started = time.perf_counter()
        response = await broker.client.get("/v1/accounts", headers=headers)
        waited = time.perf_counter() - started
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert waited < 5  # bounded by TOKEN_BROKER_DB_POOL_TIMEOUT_SECONDS, not hanging
    assert (await broker.client.get("/v1/accounts", headers=headers)).status_code == 200


async def test_many_concurrent_slow_requests_queue_then_shed(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    broker = await broker_factory(
        settings_factory(db_pool_size=2, db_max_overflow=0, db_pool_timeout_seconds=1)
    )
    headers = await broker.headers(Permission.ACCOUNTS_READ)
    responses = await asyncio.gather(
        *(broker.client.get("/v1/accounts", headers=headers) for _ in range(50))
    )
    assert {r.status_code for r in responses} <= {200, 503}
    assert sum(r.status_code == 200 for r in responses) >= 2
