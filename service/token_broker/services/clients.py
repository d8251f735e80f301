"""API clients: the services that call the broker, created, listed and revoked by operators."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from token_broker.errors import BadRequest, NotFound
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import generate_api_key, hash_api_key, parse_permissions
from token_broker.services.audit import Action, write_audit
from token_broker.store.change_feed import CHANNEL, payload
from token_broker.store.database import Database
from token_broker.store.models import ApiClient
from token_broker.store.repositories import ApiClientRepository, ChangeNotices

_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
            await write_audit(session, Action.CLIENT_CREATED, "ok", client_id=client.id)
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
                await write_audit(session, Action.CLIENT_REVOKED, "ok", client_id=client.id)
                await ChangeNotices(session).send(CHANNEL, payload("client", client.id))
        return client
