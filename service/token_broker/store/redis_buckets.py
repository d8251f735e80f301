"""Token buckets shared by every replica, in Redis: one atomic Lua script per reservation.

The same reservation rule as `kit/token_bucket.py`, evaluated inside Redis so that
replicas asking at once are served one after another. Redis's own clock (`TIME`)
is the only clock, so replicas whose clocks disagree still share one rate. Each
bucket expires once it would be full again: idle users cost no memory.

Redis is optional. Anything that goes wrong talking to it raises
`SharedBucketsUnavailable`, and the caller decides what to do instead.
"""

from __future__ import annotations

import math
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

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            raise SharedBucketsUnavailable(type(error).__name__) from None

    async def close(self) -> None:
        await self.client.aclose()
