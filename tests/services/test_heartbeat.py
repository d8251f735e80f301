"""Replica heartbeats: each serving broker records the key ids it holds; `keys rotate` refuses
while a live one lacks the new primary key, and `check` names it."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from tests.support.brokers import TEST_KEYS, Broker, start_broker
from tests.support.hygiene import register_secret
from tests.support.processes import cli
from token_broker.kit.clock import utcnow
from token_broker.services.replicas import live_replicas
from token_broker.store.models import Replica
from token_broker.store.sealing import Keyring


async def replicas(broker: Broker) -> list[Replica]:
    async with broker.state.database.transaction() as session:
        return list((await session.exec(select(Replica))).all())


async def test_a_serving_broker_has_a_heartbeat_until_it_stops(settings_factory) -> None:
    app, lifespan, client = await start_broker(settings_factory())
    try:
        (row,) = await live_replicas(app.state.broker.database)
        assert (row.host, row.pid) == (socket.gethostname(), os.getpid())
        assert row.key_id_list == ["test1"]
        assert row.primary_key_id == "test1"
        assert utcnow() - row.last_seen_at < timedelta(seconds=5)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    assert await live_replicas(app.state.broker.database) == []


async def test_a_replica_not_seen_lately_is_not_live(broker: Broker) -> None:
    (row,) = await replicas(broker)
    async with broker.state.database.transaction() as session:
        stale = await session.get(Replica, row.id)
        assert stale is not None
        stale.last_seen_at = utcnow() - timedelta(minutes=5)
        session.add(stale)
    assert await live_replicas(broker.state.database) == []


async def test_keys_rotate_refuses_while_a_live_replica_lacks_the_key_and_check_names_it(
    connected: Broker, cli_env: dict[str, str], tmp_path: Path
) -> None:
    new_entry = register_secret(Keyring.generate_entry("k9"))
    env = {**cli_env, "TOKEN_BROKER_ENCRYPTION_KEYS": f"{new_entry},{TEST_KEYS}"}

    refused = await asyncio.to_thread(cli, "keys", "rotate", env=env, cwd=tmp_path)
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert lines[0] == (
        "refusing to rotate: 1 live replica(s) do not hold the new primary key k9; "
        "they could not open what it seals:"
    )
    assert lines[1].startswith(f"  {socket.gethostname()} pid {os.getpid()} (seen ")
    assert lines[1].endswith("keys test1; primary test1)")
    assert "--force" in lines[-1]

    checked = await asyncio.to_thread(cli, "check", env=env, cwd=tmp_path)
    assert (
        "FAIL replicas: 1 of 1 live replicas lack primary key k9 (restart them with it): "
        f"{socket.gethostname()} pid {os.getpid()}"
    ) in checked.stdout

    forced = await asyncio.to_thread(cli, "keys", "rotate", "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "every value is now under key k9" in forced.stdout

    # With only the old key, `check` now fails, naming the key it cannot open.
    old_only = await asyncio.to_thread(cli, "check", env=cli_env, cwd=tmp_path)
    assert (
        "FAIL secrets: cannot open secrets sealed with key k9 (not in this replica's keyring, "
        "which holds test1; 2 of 2 sampled values)"
    ) in old_only.stdout
    with_both = await asyncio.to_thread(cli, "check", env=env, cwd=tmp_path)
    assert "ok   secrets (2 sampled values open)" in with_both.stdout
