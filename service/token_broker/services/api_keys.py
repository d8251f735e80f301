"""API keys: their shape and hash, permissions, and the authenticator behind every /v1 route.

Keys are `tbk_` + 43 characters of randomness (256 bits). Only the SHA-256 of a key
is stored; a key is found by looking its hash up, so comparison never runs over
the secret itself. A key that high in entropy needs no slow hash.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from token_broker.errors import BadRequest, Forbidden, RateLimited, Unauthenticated
from token_broker.kit.clock import utcnow
from token_broker.kit.rate_limit import RateLimiter
from token_broker.kit.single_flight import SingleFlight
from token_broker.store.database import Database
from token_broker.store.repositories import ApiClientRepository

KEY_PREFIX = "tbk_"
_KEY_SHAPE = re.compile(r"^tbk_[A-Za-z0-9_-]{43}$")


class Permission(StrEnum):
    TOKENS_READ = "tokens:read"
    MESSAGES_READ = "messages:read"
    ACCOUNTS_READ = "accounts:read"
    ACCOUNTS_WRITE = "accounts:write"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated API client."""

    client_id: str
    name: str
    permissions: frozenset[str]

    def require(self, permission: Permission) -> None:
        if permission.value not in self.permissions:
            raise Forbidden(f"This API client lacks the {permission.value} permission.")


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_permissions(values: Iterable[str]) -> frozenset[str]:
    known = {permission.value for permission in Permission}
    permissions = frozenset(values)
    unknown = sorted(permissions - known)
    if unknown:
        raise BadRequest(
            f"unknown permission {', '.join(unknown)}; expected any of {', '.join(sorted(known))}"
        )
    if not permissions:
        raise BadRequest("at least one permission is required")
    return permissions


class Authenticator:
    """Turns a Bearer key into a `Caller`, caching lookups for `ttl` seconds.

    The cache keeps the hot path off the database; it also bounds how long a revoked
    key keeps working in a replica that did not hear of the revocation: at most `ttl`.
    Unknown keys are cached too, so a caller spraying bad keys costs one lookup each
    per `ttl`, bounded by `max_entries`.
    """

    def __init__(
        self,
        database: Database,
        *,
        ttl: float,
        max_entries: int = 10_000,
        per_client: RateLimiter | None = None,
        lookups: RateLimiter | None = None,
    ) -> None:
        self.database = database
        self.ttl = ttl
        self.max_entries = max_entries
        self.per_client = per_client or RateLimiter(0, 1)
        # Keys this replica has not seen recently cost a query each: bounded, so a caller
        # spraying random keys cannot turn into a flood of queries.
        self.lookups = lookups or RateLimiter(0, 1)
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._lookups: SingleFlight[str, Caller | None] = SingleFlight("api-key-lookup")

    async def authenticate(self, key: str | None) -> Caller:
        if not key or not _KEY_SHAPE.match(key):
            raise Unauthenticated()
        key_hash = hash_api_key(key)
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > time.monotonic():
            caller = cached[1]
        else:
            if not self._lookups.running(key_hash):
                wait = self.lookups.take("lookup")
                if wait is not None:
                    raise RateLimited(
                        "Too many unfamiliar API keys at once; retry shortly.",
                        retry_after=max(1, math.ceil(wait)),
                    )
            # One lookup per key at a time: when an entry expires under load, every
            # request in flight with that key would otherwise query at once.
            caller = await self._lookups.run(key_hash, lambda: self._lookup_and_cache(key_hash))
        if caller is None:
            raise Unauthenticated()
        wait = self.per_client.take(caller.client_id)
        if wait is not None:
            raise RateLimited(retry_after=max(1, math.ceil(wait)))
        return caller

    async def _lookup_and_cache(self, key_hash: str) -> Caller | None:
        caller, holds_for = await self._lookup(key_hash)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key_hash] = (time.monotonic() + min(self.ttl, holds_for), caller)
        return caller

    def on_change(self, kind: str, identifier: str | None) -> None:
        if kind == "client":
            self.forget(identifier)

    def forget(self, client_id: str | None = None) -> None:
        """Drop cached entries (all, or one client's) after a revocation."""
        if client_id is None:
            self._cache.clear()
            return
        for key_hash, (_, caller) in list(self._cache.items()):
            if caller is not None and caller.client_id == client_id:
                del self._cache[key_hash]

    async def _lookup(self, key_hash: str) -> tuple[Caller | None, float]:
        """The caller a key stands for, and for how many seconds that answer holds."""
        async with self.database.transaction() as session:
            client = await ApiClientRepository(session).by_key_hash(key_hash)
        if client is None or client.revoked_at is not None:
            return None, self.ttl
        caller = Caller(client.id, client.name, frozenset(client.permission_list))
        if client.key_hash == key_hash:
            return caller, self.ttl
        # The key a rotation replaced: good until the end of its overlap, not a moment more.
        expires = client.previous_key_expires_at
        remaining = (expires - utcnow()).total_seconds() if expires is not None else 0.0
        return (caller, remaining) if remaining > 0 else (None, self.ttl)
