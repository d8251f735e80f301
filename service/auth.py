"""API clients: keys, their hashes, permissions, and the authenticator behind every /v1 route.

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
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from service.audit import Action, audit_event
from service.db import Database
from service.errors import BadRequest, Forbidden, NotFound, RateLimited, Unauthenticated
from service.events import CHANNEL, payload
from service.flights import SingleFlight
from service.models import ApiClient, utcnow
from service.ratelimit import RateLimiter
from service.repositories import ApiClientRepository, AuditRepository, ChangeNotices

KEY_PREFIX = "tbk_"
_KEY_SHAPE = re.compile(r"^tbk_[A-Za-z0-9_-]{43}$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
        caller = await self._lookup(key_hash)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key_hash] = (time.monotonic() + self.ttl, caller)
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

    async def _lookup(self, key_hash: str) -> Caller | None:
        async with self.database.transaction() as session:
            client = await ApiClientRepository(session).by_key_hash(key_hash)
        if client is None or client.revoked_at is not None:
            return None
        return Caller(client.id, client.name, frozenset(client.permission_list))


class ClientService:
    """Creates, lists and revokes API clients (through the CLI, not over HTTP)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, name: str, permissions: Iterable[str]) -> tuple[ApiClient, str]:
        if not _CLIENT_NAME.match(name):
            raise BadRequest(
                "client name must be 1-100 characters of A-Z a-z 0-9 . _ -, starting with a "
                "letter or digit"
            )
        granted = parse_permissions(permissions)
        key = generate_api_key()
        client = ApiClient(
            id=str(uuid.uuid4()),
            name=name,
            key_hash=hash_api_key(key),
            permissions=" ".join(sorted(granted)),
            created_at=utcnow(),
        )
        async with self.database.transaction() as session:
            clients = ApiClientRepository(session)
            if await clients.by_name(name) is not None:
                raise BadRequest(f"an API client named {name!r} already exists")
            await clients.add(client)
            await AuditRepository(session).add_many(
                [audit_event(Action.CLIENT_CREATED, "ok", client_id=client.id)]
            )
        return client, key

    async def list(self) -> list[ApiClient]:
        async with self.database.transaction() as session:
            return list(await ApiClientRepository(session).all())

    async def revoke(self, name: str) -> ApiClient:
        async with self.database.transaction() as session:
            clients = ApiClientRepository(session)
            client = await clients.by_name(name)
            if client is None:
                raise NotFound(f"no API client named {name!r}")
            if client.revoked_at is None:
                await clients.revoke(client, utcnow())
                await AuditRepository(session).add_many(
                    [audit_event(Action.CLIENT_REVOKED, "ok", client_id=client.id)]
                )
                await ChangeNotices(session).send(CHANNEL, payload("client", client.id))
        return client
