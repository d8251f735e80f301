"""Token buckets and calls in progress shared by every replica, in Redis, each an atomic Lua script.

Buckets: the same reservation rule as `kit/token_bucket.py`, evaluated inside Redis
so that replicas asking at once are served one after another. Redis's own clock
(`TIME`) is the only clock, so replicas whose clocks disagree still share one rate.
Each bucket expires once it would be full again: idle users cost no memory.

Calls in progress: a sorted set of leases per key (`<id>:<weight>`, scored by when
the lease lapses). A lease is taken only while the weights held stay within the
limit, and given back when the call ends; a replica that dies holding one loses it
when it lapses (`LEASE_SECONDS`, longer than any Gmail call may take).

Redis is optional. Anything that goes wrong talking to it raises
`SharedBucketsUnavailable`, and the caller decides what to do instead.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, cost, max_wait (s; negative: none).
# Returns {granted (1/0), wait seconds as a string} (Lua numbers would be truncated).
_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens < cost then
  wait = (cost - tokens) / rate
end
if max_wait >= 0 and wait > max_wait then
  return {0, tostring(wait)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(((burst - tokens) / rate + 1) * 1000))
return {1, tostring(wait)}
"""


# KEYS[1]: the leases. ARGV: lease member ("<id>:<weight>"), weight, limit, lease ms.
_TAKE_LEASE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  used = used + tonumber(string.match(member, ':(%d+)$'))
end
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""
LEASE_SECONDS = 60.0


class SharedBucketsUnavailable(Exception):
    """Redis did not answer (or answered nonsense); the reason is in the message."""


def redis_client(url: str, *, timeout: float) -> Redis:
    """A client that gives up quickly: a slow Redis must not hold Gmail calls back."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return client


class RedisBuckets:
    def __init__(self, client: Redis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script: Any = client.register_script(_RESERVE)
        self._take_lease: Any = client.register_script(_TAKE_LEASE)

    async def reserve(
        self, key: str, cost: float, *, rate: float, burst: float, max_wait: float | None
    ) -> tuple[bool, float]:
        """Like `TokenBucket.reserve`, for the bucket `key` that every replica shares."""
        try:
            granted, wait = await self._script(
                keys=[self.prefix + key],
                args=[rate, burst, cost, -1.0 if max_wait is None else max_wait],
            )
            seconds = float(wait)
        except (RedisError, OSError, ValueError, TypeError) as error:
            raise SharedBucketsUnavailable(type(error).__name__) from None
        if not math.isfinite(seconds):
            raise SharedBucketsUnavailable("a non-finite wait")
        return int(granted) == 1, seconds

    async def take_lease(self, key: str, weight: int, *, limit: int) -> str | None:
        """A lease on `weight` of the `limit` calls in progress for `key`, or None if full."""
        member = f"{uuid.uuid4().hex}:{weight}"
        try:
            taken = await self._take_lease(
                keys=[self.prefix + "calls:" + key],
                args=[member, weight, limit, int(LEASE_SECONDS * 1000)],
            )
        except (RedisError, OSError) as error:
            raise SharedBucketsUnavailable(type(error).__name__) from None
        return member if int(taken) == 1 else None

    async def give_back(self, key: str, lease: str) -> None:
        try:
            await self.client.zrem(self.prefix + "calls:" + key, lease)
        except (RedisError, OSError) as error:
            raise SharedBucketsUnavailable(type(error).__name__) from None

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            raise SharedBucketsUnavailable(type(error).__name__) from None

    async def close(self) -> None:
        await self.client.aclose()
