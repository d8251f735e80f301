"""A broker (or `keys rotate`) killed mid-operation leaves every account as it was or
fully updated: checked by restarting and using each account."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from google_sandbox.browser import consent
from google_sandbox.records import FaultRule
from tests.support.brokers import TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_KEYS, TEST_REDIRECT_URI
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import BrokerProcess
from tests.support.provider import Provider
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.store.database import Database, create_engine
from token_broker.store.models import Account
from token_broker.store.sealing import Keyring


def broker_env(database_url: str, provider: Provider, keys: str = TEST_KEYS) -> dict[str, str]:
    return {
        "TOKEN_BROKER_DATABASE_URL": database_url,
        "TOKEN_BROKER_ENCRYPTION_KEYS": keys,
        "TOKEN_BROKER_GOOGLE_CLIENT_ID": TEST_CLIENT_ID,
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": TEST_CLIENT_SECRET,
        "TOKEN_BROKER_REDIRECT_URI": TEST_REDIRECT_URI,
        # Each check of a stored grant forces a refresh: no throttle between them.
        "TOKEN_BROKER_FORCED_REFRESH_INTERVAL_SECONDS": "0",
        **{f"TOKEN_BROKER_{k.upper()}": v for k, v in provider.settings().items()},
    }


async def api_key(database_url: str) -> str:
    database = Database(create_engine(database_url))
    _, key = await ClientService(database).create(
        f"crash-{uuid.uuid4().hex[:6]}", [p.value for p in Permission]
    )
    await database.dispose()
    return register_secret(key)


async def accounts(database_url: str) -> list[Account]:
    database = Database(create_engine(database_url))
    async with database.transaction() as session:
        rows = list((await session.exec(select(Account))).all())
    await database.dispose()
    return rows


async def connect(http: httpx.AsyncClient, broker: BrokerProcess, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    started = await http.post(f"{broker.url}/v1/authorizations", json={}, headers=headers)
    answer = await consent(http, started.json()["authorization_url"])
    register_secret(answer["code"])
    return await http.get(
        f"{broker.url}/v1/oauth/callback", params={"code": answer["code"], "state": answer["state"]}
    )


async def kill_during_token_call(
    broker: BrokerProcess, provider: Provider, call: Coroutine[Any, Any, httpx.Response]
) -> None:
    """Start `call`, wait until the broker is inside its token request, then SIGKILL it."""
    stall = FaultRule("token", kind="latency", delay=3, times=1)
    provider.state.faults.append(stall)
    request = asyncio.create_task(call)
    await eventually(lambda: stall.seen == 1, within=10)
    broker.kill()
    with pytest.raises(httpx.TransportError):
        await request


async def assert_usable(
    http: httpx.AsyncClient, broker: BrokerProcess, subject: str, headers: dict[str, str]
) -> None:
    """The account's stored grant still refreshes: Google accepts it."""
    used = await http.get(
        f"{broker.url}/v1/accounts/{subject}/access-token",
        params={"force_refresh": "true"},
        headers=headers,
    )
    assert used.status_code == 200, used.text
    register_secret(used.json()["access_token"])


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def test_killed_during_a_code_exchange(
    provider: Provider, database_url: str, http: httpx.AsyncClient
) -> None:
    env = broker_env(database_url, provider)
    key = await api_key(database_url)
    first = BrokerProcess(env, name="crash-exchange")
    try:
        await first.ready()
        assert (await connect(http, first, key)).status_code == 200
        (before,) = await accounts(database_url)

        headers = {"Authorization": f"Bearer {key}"}
        started = await http.post(f"{first.url}/v1/authorizations", json={}, headers=headers)
        answer = await consent(http, started.json()["authorization_url"])
        register_secret(answer["code"])
        await kill_during_token_call(
            first, provider,
            http.get(f"{first.url}/v1/oauth/callback",
                     params={"code": answer["code"], "state": answer["state"]}),
        )  # fmt: skip
    finally:
        first.close()

    (after,) = await accounts(database_url)
    assert (after.refresh_token, after.status) == (before.refresh_token, before.status)
    second = BrokerProcess(env, name="crash-exchange-restarted")
    try:
        await second.ready()
        replay = await http.get(
            f"{second.url}/v1/oauth/callback",
            params={"code": answer["code"], "state": answer["state"]},
        )
        assert replay.status_code == 400  # the state was spent before the exchange
        await assert_usable(http, second, after.subject, headers)
    finally:
        second.close()


async def test_killed_during_a_refresh(
    provider: Provider, database_url: str, http: httpx.AsyncClient
) -> None:
    env = broker_env(database_url, provider)
    key = await api_key(database_url)
    headers = {"Authorization": f"Bearer {key}"}
    first = BrokerProcess(env, name="crash-refresh")
    try:
        await first.ready()
        assert (await connect(http, first, key)).status_code == 200
        (before,) = await accounts(database_url)
        await kill_during_token_call(
            first, provider,
            http.get(f"{first.url}/v1/accounts/{before.subject}/access-token",
                     params={"force_refresh": "true"}, headers=headers),
        )  # fmt: skip
    finally:
        first.close()

    (after,) = await accounts(database_url)
    assert (after.refresh_token, after.status) == (before.refresh_token, "active")
    second = BrokerProcess(env, name="crash-refresh-restarted")
    try:
        await second.ready()
        await assert_usable(http, second, after.subject, headers)
    finally:
        second.close()


async def seed_accounts(database_url: str, count: int) -> None:
    keyring = Keyring.parse(TEST_KEYS)
    now = utcnow()
    rows = []
    for index in range(count):
        account_id = str(uuid.uuid4())
        rows.append({
            "id": account_id, "provider": "google", "subject": f"{10**20 + index}",
            "email": f"user{index}@example.com", "email_verified": True, "status": "active",
            "scopes": "https://www.googleapis.com/auth/gmail.readonly",
            "refresh_token": keyring.seal(f"1//seeded-{index}", column=Account.REFRESH_TOKEN, row=account_id),
            "access_token": keyring.seal(f"ya29.seeded-{index}", column=Account.ACCESS_TOKEN, row=account_id),
            "access_token_expires_at": now + timedelta(hours=1),
            "created_at": now, "updated_at": now, "last_refreshed_at": now,
        })  # fmt: skip
    database = Database(create_engine(database_url))
    async with database.engine.begin() as connection:
        await connection.execute(sa.insert(Account), rows)
    await database.dispose()


async def rotated_count(database_url: str, kid: str) -> int:
    database = Database(create_engine(database_url))
    async with database.engine.connect() as connection:
        count = await connection.scalar(
            sa.select(sa.func.count()).where(Account.refresh_token.like(f"tb1.{kid}.%"))  # type: ignore[union-attr]
        )
    await database.dispose()
    return int(count or 0)


async def test_killed_during_a_key_rotation(
    provider: Provider, database_url: str, http: httpx.AsyncClient
) -> None:
    total = 1500
    await seed_accounts(database_url, total)
    new_key = register_secret(Keyring.generate_entry("k2"))
    both = f"{new_key},{TEST_KEYS}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "TOKEN_BROKER_DATABASE_URL": database_url, "TOKEN_BROKER_ENCRYPTION_KEYS": both}  # fmt: skip
    rotation = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "token_broker", "keys", "rotate", "--batch-size", "1",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def some_rotated() -> bool:
        return await rotated_count(database_url, "k2") >= 20

    await eventually(some_rotated, within=60, interval=0.005)
    rotation.send_signal(signal.SIGKILL)
    await rotation.wait()
    partly = await rotated_count(database_url, "k2")
    assert 20 <= partly < total, "the rotation should have been caught half-way"

    # Every value opens, under whichever key it is sealed with now.
    keyring = Keyring.parse(both)
    for account in await accounts(database_url):
        for column, value in ((Account.REFRESH_TOKEN, account.refresh_token),
                              (Account.ACCESS_TOKEN, account.access_token)):  # fmt: skip
            assert value is not None
            keyring.open(value, column=column, row=account.id)

    # Resumed, it finishes; a restarted broker then serves every account.
    finished = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "token_broker", "keys", "rotate", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, errors = await finished.communicate()
    assert finished.returncode == 0, errors.decode()
    assert await rotated_count(database_url, "k2") == total
    key = await api_key(database_url)
    broker = BrokerProcess(broker_env(database_url, provider, keys=both), name="crash-rotation")
    try:
        await broker.ready()
        headers = {"Authorization": f"Bearer {key}"}
        semaphore = asyncio.Semaphore(32)

        async def use(index: int) -> int:
            async with semaphore:
                response = await http.get(
                    f"{broker.url}/v1/accounts/user{index}@example.com/access-token",
                    headers=headers,
                )
                return response.status_code

        statuses = await asyncio.gather(*(use(i) for i in range(total)))
        assert set(statuses) == {200}
    finally:
        broker.close()
