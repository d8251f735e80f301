"""Redis for the tests that need it (the shared Gmail quota): 127.0.0.1:6379, a key prefix
of the test's own so parallel runs never share a bucket, and its keys deleted afterwards.

When Redis does not answer these tests are skipped, unless
TOKEN_BROKER_TEST_REQUIRE_REDIS=1 (CI, whose .ci/run starts it), which makes it a failure.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

REDIS_URL = os.environ.get("TOKEN_BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("TOKEN_BROKER_TEST_REQUIRE_REDIS") == "1"


@dataclass(frozen=True)
class RedisForTests:
    url: str
    prefix: str
    host: str
    port: int


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
async def test_redis() -> AsyncIterator[RedisForTests]:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    host = client.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    port = int(client.connection_pool.connection_kwargs.get("port", 6379))
    if not _reachable(host, port):
        await client.aclose()
        if REQUIRE_REDIS:
            pytest.fail(f"Redis is not answering at {host}:{port}")
        pytest.skip(f"Redis is not answering at {host}:{port}")
    prefix = f"tb-test-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
    yield RedisForTests(REDIS_URL, prefix, host, port)
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
