"""API clients: the services that call the broker, created, listed, rotated, revoked and
deleted by operators.

A revoked client stays listed (its name taken) until it is deleted; deleting frees the
name, and the audit log keeps the client's history by id and name. Rotating gives a
client a new key while the one it replaces keeps working for an overlap, so callers
can be moved over without an outage.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import timedelta

from token_broker.errors import BadRequest, NotFound
from token_broker.kit.clock import rfc3339, utcnow
from token_broker.services.api_keys import generate_api_key, hash_api_key, parse_permissions
from token_broker.services.audit import Action, write_audit
from token_broker.store.change_feed import CHANNEL, payload
from token_broker.store.database import Database
from token_broker.store.models import ApiClient
from token_broker.store.repositories import ApiClientRepository, ChangeNotices

_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ClientService:
    """Manages API clients (through the CLI, not over HTTP)."""

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
            existing = await clients.by_name(name)
            if existing is not None:
                if existing.revoked_at is not None:
                    raise BadRequest(
                        f"an API client named {name!r} exists (revoked); free the name with "
                        f"`token-broker clients delete {name}`"
                    )
                raise BadRequest(f"an API client named {name!r} already exists")
            await clients.add(client)
            await write_audit(
                session,
                Action.CLIENT_CREATED,
                "ok",
                client_id=client.id,
                detail={"name": name, "permissions": client.permission_list},
            )
        return client, key

    async def list(self) -> list[ApiClient]:
        async with self.database.transaction() as session:
            return list(await ApiClientRepository(session).all())

    async def rotate(self, name: str, *, overlap_seconds: int) -> tuple[ApiClient, str]:
        """A new key for the client; the current one keeps working for `overlap_seconds`.

        A key replaced by an earlier rotation stops at once (a client has at most two).
        """
        key = generate_api_key()
        async with self.database.transaction() as session:
            clients = ApiClientRepository(session)
            client = await self._named(clients, name)
            if client.revoked_at is not None:
                raise BadRequest(
                    f"API client {name!r} is revoked; create a new client (or delete this one "
                    "and create it again)"
                )
            now = utcnow()
            if overlap_seconds > 0:
                client.previous_key_hash = client.key_hash
                client.previous_key_expires_at = now + timedelta(seconds=overlap_seconds)
            else:
                client.previous_key_hash = client.previous_key_expires_at = None
            client.key_hash = hash_api_key(key)
            await clients.save(client)
            await write_audit(
                session,
                Action.CLIENT_KEY_ROTATED,
                "ok",
                client_id=client.id,
                detail={
                    "name": name,
                    "previous_key_until": rfc3339(client.previous_key_expires_at)
                    if client.previous_key_expires_at
                    else None,
                },
            )
            await ChangeNotices(session).send(CHANNEL, payload("client", client.id))
        return client, key

    async def revoke(self, name: str) -> ApiClient:
        async with self.database.transaction() as session:
            clients = ApiClientRepository(session)
            client = await self._named(clients, name)
            if client.revoked_at is None:
                client.revoked_at = utcnow()
                await clients.save(client)
                await write_audit(
                    session, Action.CLIENT_REVOKED, "ok", client_id=client.id, detail={"name": name}
                )
                await ChangeNotices(session).send(CHANNEL, payload("client", client.id))
        return client

    async def delete(self, name: str) -> ApiClient:
        """Remove the client and its keys; its name is free again, its audit rows remain."""
        async with self.database.transaction() as session:
            clients = ApiClientRepository(session)
            client = await self._named(clients, name)
            await clients.delete(client)
            await write_audit(
                session, Action.CLIENT_DELETED, "ok", client_id=client.id, detail={"name": name}
            )
            await ChangeNotices(session).send(CHANNEL, payload("client", client.id))
        return client

    @staticmethod
    async def _named(clients: ApiClientRepository, name: str) -> ApiClient:
        client = await clients.by_name(name)
        if client is None:
            raise NotFound(f"no API client named {name!r}")
        return client
