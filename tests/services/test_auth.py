import time
from datetime import timedelta

import pytest
from sqlmodel import col, select

from tests.support.brokers import Broker
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from token_broker.errors import BadRequest, NotFound
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission, hash_api_key
from token_broker.services.clients import ClientService
from token_broker.store.models import ApiClient, AuditEvent


async def get_account_list(broker: Broker, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    response = await broker.client.get("/v1/accounts", headers=headers)
    return response.status_code


async def test_key_authenticates_and_is_stored_only_as_hash(broker: Broker) -> None:
    key = await broker.api_key(Permission.ACCOUNTS_READ)
    assert key.startswith("tbk_")
    assert len(key) == 47
    assert await get_account_list(broker, key) == 200
    async with broker.state.database.transaction() as session:
        rows = (await session.exec(select(ApiClient))).all()
    assert [row.key_hash for row in rows] == [hash_api_key(key)]
    assert all(key not in str(value) for row in rows for value in row.model_dump().values())


async def test_missing_malformed_and_unknown_keys_get_401_problem(broker: Broker) -> None:
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer tbk_" + "A" * 43},
    ):
        response = await broker.client.get("/v1/accounts", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        body = response.json()
        assert body["code"] == "unauthenticated"
        assert body["type"] == "urn:token-broker:problem:unauthenticated"
        assert body["status"] == 401


async def test_key_without_permission_gets_403(broker: Broker) -> None:
    key = await broker.api_key(Permission.TOKENS_READ)
    response = await broker.client.get("/v1/accounts", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert "accounts:read" in response.json()["detail"]


async def test_revoked_key_gets_401(broker: Broker) -> None:
    key = await broker.api_key(Permission.ACCOUNTS_READ, name="crm-sync")
    assert await get_account_list(broker, key) == 200
    await ClientService(broker.state.database).revoke("crm-sync")
    broker.state.authenticator.forget()
    assert await get_account_list(broker, key) == 401


async def test_revocation_reaches_a_cached_key(
    backend: str, broker_factory, settings_factory
) -> None:
    broker = await broker_factory(settings_factory(api_key_cache_seconds=300))
    key = await broker.api_key(Permission.ACCOUNTS_READ, name="cached")
    assert await get_account_list(broker, key) == 200
    await ClientService(broker.state.database).revoke("cached")  # as the CLI does
    if backend == "postgres":
        # NOTIFY reaches the replica's cache: the key stops working within moments.
        await eventually(lambda: get_account_list_is(broker, key, 401))
    else:
        # SQLite: the revoking CLI is another process; the cache TTL bounds the delay.
        assert await get_account_list(broker, key) == 200
        broker.state.authenticator.ttl = 0
        broker.state.authenticator.forget()
        assert await get_account_list(broker, key) == 401


async def get_account_list_is(broker: Broker, key: str, status: int) -> bool:
    return await get_account_list(broker, key) == status


async def test_clients_list_and_duplicate_names(database) -> None:
    service = ClientService(database)
    client, _ = await service.create("support-tool", ["tokens:read", "messages:read"])
    assert client.permissions == "messages:read tokens:read"
    listed = await service.list()
    assert [c.name for c in listed] == ["support-tool"]
    with pytest.raises(BadRequest, match="already exists"):
        await service.create("support-tool", ["tokens:read"])
    with pytest.raises(BadRequest, match="unknown permission"):
        await service.create("other", ["tokens:write"])


async def test_rotation_overlaps_then_ends_the_replaced_key(
    broker_factory, settings_factory
) -> None:
    broker = await broker_factory(settings_factory(api_key_cache_seconds=0))
    service = ClientService(broker.state.database)
    old = await broker.api_key(Permission.ACCOUNTS_READ, name="crm-sync")

    client, new = await service.rotate("crm-sync", overlap_seconds=3600)
    register_secret(new)
    assert new != old
    assert await get_account_list(broker, new) == 200
    assert await get_account_list(broker, old) == 200  # within the overlap
    assert client.previous_key_expires_at is not None

    # The overlap ends: the replaced key stops, the new one goes on.
    async with broker.state.database.transaction() as session:
        row = (await session.exec(select(ApiClient).where(ApiClient.name == "crm-sync"))).one()
        row.previous_key_expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
    assert await get_account_list(broker, old) == 401
    assert await get_account_list(broker, new) == 200

    # Rotating again with no overlap ends the current key at once; revoking ends every key.
    _, newest = await service.rotate("crm-sync", overlap_seconds=0)
    register_secret(newest)
    assert await get_account_list(broker, new) == 401
    assert await get_account_list(broker, newest) == 200
    await service.revoke("crm-sync")
    assert await get_account_list(broker, newest) == 401
    with pytest.raises(BadRequest, match="revoked"):
        await service.rotate("crm-sync", overlap_seconds=60)


async def test_a_cached_replaced_key_stops_when_its_overlap_ends(broker: Broker) -> None:
    authenticator = broker.state.authenticator
    old = await broker.api_key(Permission.ACCOUNTS_READ, name="cached")
    await ClientService(broker.state.database).rotate("cached", overlap_seconds=1)
    authenticator.forget()
    assert await get_account_list(broker, old) == 200
    # Cached for at most what is left of the overlap, not the full cache lifetime (5 s).
    started = time.monotonic()

    async def refused() -> bool:
        return await get_account_list(broker, old) == 401

    await eventually(refused, within=4, interval=0.05)
    assert time.monotonic() - started < authenticator.ttl


async def test_delete_frees_the_name_and_the_audit_keeps_the_history(broker: Broker) -> None:
    service = ClientService(broker.state.database)
    key = await broker.api_key(Permission.ACCOUNTS_READ, name="support-tool")
    await service.revoke("support-tool")
    with pytest.raises(BadRequest, match="clients delete support-tool"):
        await service.create("support-tool", ["tokens:read"])

    deleted = await service.delete("support-tool")
    broker.state.authenticator.forget()
    assert await get_account_list(broker, key) == 401
    again, new_key = await service.create("support-tool", ["accounts:read"])
    register_secret(new_key)
    assert again.id != deleted.id
    assert await get_account_list(broker, new_key) == 200
    assert [c.name for c in await service.list()] == ["support-tool"]

    await broker.state.audit.flush()
    async with broker.state.database.transaction() as session:
        events = (
            await session.exec(
                select(AuditEvent)
                .where(col(AuditEvent.action).like("client_%"))
                .order_by(col(AuditEvent.id))
            )
        ).all()
    assert [(e.action, e.client_id, (e.detail or {}).get("name")) for e in events] == [
        ("client_created", deleted.id, "support-tool"),
        ("client_revoked", deleted.id, "support-tool"),
        ("client_deleted", deleted.id, "support-tool"),
        ("client_created", again.id, "support-tool"),
    ]
    with pytest.raises(NotFound):
        await service.delete("nobody")
