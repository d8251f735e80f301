"""`keys rotate`: every secret re-sealed under the new primary, while the broker serves."""

from __future__ import annotations

import asyncio
import os

import pytest
from pydantic import SecretStr
from sqlmodel import select

from tests.support.brokers import TEST_KEYS
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.processes import cli
from token_broker.services.key_rotation import KeyRotation, ReplicasLackPrimaryKey
from token_broker.store.models import Account, OAuthState
from token_broker.store.sealing import Keyring


async def test_rotation_reseals_everything_and_resumes(
    live: Live, broker_factory, settings_factory
) -> None:
    assert (await live.connect()).status_code == 200
    await live.start()  # a pending state with a sealed PKCE verifier
    subject = live.provider.state.users["alice@example.com"].sub
    new_entry = register_secret(Keyring.generate_entry("k2"))
    rotated = Keyring.parse(f"{new_entry},{TEST_KEYS}")

    # The running broker holds only the old key: rotating now would lock it out.
    with pytest.raises(ReplicasLackPrimaryKey) as refused:
        await KeyRotation(live.broker.state.database, rotated).run()
    assert [replica.pid for replica in refused.value.replicas] == [os.getpid()]
    assert refused.value.replicas[0].key_id_list == ["test1"]
    assert (await live.broker.client.get("/readyz")).status_code == 200

    report = await KeyRotation(live.broker.state.database, rotated, batch_size=1).run(force=True)
    assert report.primary == "k2"
    assert report.resealed["accounts.refresh_token"] == 1
    assert report.resealed["accounts.access_token"] == 1
    assert report.resealed["oauth_states.code_verifier"] >= 1
    again = await KeyRotation(live.broker.state.database, rotated).run(force=True)
    assert again.total_resealed == 0

    # The replica left behind says so: not ready, naming the key it cannot open.
    ready = await live.broker.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["secrets"].startswith(
        "cannot open secrets sealed with key k2 (not in this replica's keyring, which holds test1"
    )

    async with live.broker.state.database.transaction() as session:
        account = (await session.exec(select(Account))).one()
        states = (await session.exec(select(OAuthState))).all()
    assert Keyring.key_id_of(account.refresh_token, Account.REFRESH_TOKEN) == "k2"
    assert all(Keyring.key_id_of(s.code_verifier, OAuthState.CODE_VERIFIER) == "k2" for s in states)

    # A broker that holds only the new key serves the account and refreshes it.
    only_new = await broker_factory(
        settings_factory(encryption_keys=SecretStr(new_entry), **live.provider.settings())
    )
    headers = await only_new.headers()
    response = await only_new.client.get(
        f"/v1/accounts/{subject}/access-token", params={"force_refresh": "true"}, headers=headers
    )
    assert response.status_code == 200, response.text
    register_secret(response.json()["access_token"])


async def test_rotation_while_serving(live: Live, broker_factory, settings_factory) -> None:
    assert (await live.connect()).status_code == 200
    subject = live.provider.state.users["alice@example.com"].sub
    new_entry = register_secret(Keyring.generate_entry("k3"))
    both = f"{new_entry},{TEST_KEYS}"
    # The replica was restarted with the new primary first and the old key kept.
    replica = await broker_factory(
        settings_factory(encryption_keys=SecretStr(both), **live.provider.settings())
    )
    headers = await replica.headers()

    async def serve_tokens() -> list[int]:
        statuses = []
        for _ in range(20):
            response = await replica.client.get(
                f"/v1/accounts/{subject}/access-token",
                params={"force_refresh": "true"},
                headers=headers,
            )
            statuses.append(response.status_code)
        return statuses

    rotation = KeyRotation(replica.state.database, Keyring.parse(both), batch_size=1)
    # `live`'s own broker still runs with the old key only: forced past it on purpose.
    statuses, report = await asyncio.gather(serve_tokens(), rotation.run(force=True))
    assert set(statuses) == {200}
    assert report.primary == "k3"
    assert (await rotation.run(force=True)).total_resealed == 0
    assert (await replica.client.get("/readyz")).status_code == 200


def test_keys_rotate_command(cli_env, tmp_path) -> None:
    new_entry = register_secret(Keyring.generate_entry("k9"))
    env = {**cli_env, "TOKEN_BROKER_ENCRYPTION_KEYS": f"{new_entry},{TEST_KEYS}"}
    result = cli("keys", "rotate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "every value is now under key k9" in result.stdout
    missing_old = cli(
        "keys", "rotate", env={**cli_env, "TOKEN_BROKER_ENCRYPTION_KEYS": "bad"}, cwd=tmp_path
    )
    assert missing_old.returncode == 2
    assert "TOKEN_BROKER_ENCRYPTION_KEYS" in missing_old.stderr
