"""API keys: their shape and hash, permissions, and the authenticator behind every /v1 route.

Keys are `tbk_` + 43 characters of randomness (256 bits). Only the SHA-256 of a key
is stored; a key is found by looking its hash up, so comparison never runs over
the secret itself. A key that high in entropy needs no slow hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from token_broker.errors import BadRequest, Forbidden, RateLimited, Unauthenticated
from token_broker.kit.clock import utcnow
from token_broker.kit.rate_limit import RateLimiter
from token_broker.kit.single_flight import SingleFlight
from token_broker.store.database import Database
from token_broker.store.repositories import ApiClientRepository

V = TypeVar("V")
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


def spray_source(address: str | None) -> str:
    """Whose spray budget a request spends: its source address; IPv6 by /64, since one
    host commonly holds a whole /64 and could otherwise pick a fresh address per key."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class Authenticator:
    """Turns a Bearer key into a `Caller`, caching lookups for `ttl` seconds.

    The cache keeps the hot path off the database; it also bounds how long a revoked
    key keeps working in a replica that did not hear of the revocation: at most `ttl`.

    Spraying random keys must cost the database little and lock no one out:

    - a key this replica has found valid is *known*: when its entry expires it is
      looked up again (one query per key per `ttl`, shared by every request in flight
      with it) without spending any budget, so no spray can refuse it;
    - an unknown key's answer is cached too (negatively), so repeating it is free;
    - a key this replica has not seen costs its source address one lookup from that
      source's budget (`lookups`, per source: IPv6 by /64); past it that source, and
      only that source, gets 429 until its budget refills.

    Known and unknown keys are kept apart, each bounded (oldest out first), so a flood
    of unknown keys never pushes a known one out.
    """

    def __init__(
        self,
        database: Database,
        *,
        ttl: float,
        max_entries: int = 10_000,
        per_client: RateLimiter | None = None,
        lookups: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self.per_client = per_client or RateLimiter(0, 1)
        self.lookups = lookups or RateLimiter(0, 1)
        # key hash -> (fresh until, caller); refreshed entries move to the end.
        self._known: OrderedDict[str, tuple[float, Caller]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # key hash -> fresh until
        self._lookups: SingleFlight[str, Caller | None] = SingleFlight("api-key-lookup")

    async def authenticate(self, key: str | None, *, source: str | None = None) -> Caller:
        """The caller holding `key`; `source` is the request's client address."""
        if not key or not _KEY_SHAPE.match(key):
            raise Unauthenticated()
        key_hash = hash_api_key(key)
        known = self._known.get(key_hash)
        if known is not None and known[0] > self.clock():
            caller: Caller | None = known[1]
        elif known is not None:
            caller = await self._lookup(key_hash)
        else:
            if self._unknown.get(key_hash, 0.0) > self.clock():
                raise Unauthenticated()
            if not self._lookups.running(key_hash):
                wait = self.lookups.take(spray_source(source))
                if wait is not None:
                    raise RateLimited(
                        "Too many unfamiliar API keys from this address; retry shortly.",
                        retry_after=max(1, math.ceil(wait)),
                    )
            caller = await self._lookup(key_hash)
        if caller is None:
            raise Unauthenticated()
        wait = self.per_client.take(caller.client_id)
        if wait is not None:
            raise RateLimited(retry_after=max(1, math.ceil(wait)))
        return caller

    async def _lookup(self, key_hash: str) -> Caller | None:
        # One lookup per key at a time: when an entry expires under load, every
        # request in flight with that key would otherwise query at once.
        return await self._lookups.run(key_hash, lambda: self._lookup_and_cache(key_hash))

    async def _lookup_and_cache(self, key_hash: str) -> Caller | None:
        caller, holds_for = await self._query(key_hash)
        fresh_until = self.clock() + min(self.ttl, holds_for)
        self._known.pop(key_hash, None)
        self._unknown.pop(key_hash, None)
        if caller is None:
            _bounded_put(self._unknown, key_hash, fresh_until, self.max_entries)
        else:
            _bounded_put(self._known, key_hash, (fresh_until, caller), self.max_entries)
        return caller

    def on_change(self, kind: str, identifier: str | None) -> None:
        if kind == "client":
            self.forget(identifier)

    def forget(self, client_id: str | None = None) -> None:
        """Look keys up again (all, or one client's) on their next use, after a revocation.

        They stay known: the next use costs a query, never a spray budget.
        """
        if client_id is None:
            self._unknown.clear()
        for key_hash, (_, caller) in list(self._known.items()):
            if client_id is None or caller.client_id == client_id:
                self._known[key_hash] = (0.0, caller)

    async def _query(self, key_hash: str) -> tuple[Caller | None, float]:
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


def _bounded_put(entries: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    entries[key] = value
    while len(entries) > limit:
        entries.popitem(last=False)
