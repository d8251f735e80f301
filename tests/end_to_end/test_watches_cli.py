"""`token-broker watches list|renew` as an operator runs them, beside a serving broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.flow import Live
from tests.support.processes import cli
from tests.support.push import ALICE, push_settings
from tests.support.servers import Receiver


@pytest.fixture
def live_settings(hooks: tuple[Receiver, str]) -> dict[str, Any]:
    return push_settings(hooks[1])


def environment(live: Live, cli_env: dict[str, str], hooks_url: str) -> dict[str, str]:
    env = dict(cli_env)
    for name, value in {**live.provider.settings(), **push_settings(hooks_url)}.items():
        plain = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"TOKEN_BROKER_{name.upper()}"] = str(plain)
    env["TOKEN_BROKER_KEEPALIVE_ENABLED"] = "false"
    return env


async def test_watches_list_and_renew(
    pushing: Live, hooks: tuple[Receiver, str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = environment(pushing, cli_env, hooks[1])
    listed = await asyncio.to_thread(cli, "watches", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["ACCOUNT", "STATE", "EXPIRES"]
    assert row.split()[:2] == [ALICE, "active"]

    calls = pushing.provider.state.calls["gmail.watch"]
    renewed = await asyncio.to_thread(cli, "watches", "renew", ALICE, env=env, cwd=tmp_path)
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout.splitlines()[0].split()[:2] == [ALICE, "ok"]
    assert "renewed 1 of 1 watches" in renewed.stdout
    assert pushing.provider.state.calls["gmail.watch"] == calls + 1

    everything = await asyncio.to_thread(cli, "watches", "renew", "--all", env=env, cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert pushing.provider.state.calls["gmail.watch"] == calls + 2

    # Gmail refuses the topic: the renewal fails, says why, and the command exits 1.
    pushing.provider.state.pubsub.config.topics = set()
    refused = await asyncio.to_thread(cli, "watches", "renew", ALICE, env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "failed" in refused.stdout
    assert "upstream_error forbidden" in refused.stdout
    listed = await asyncio.to_thread(cli, "watches", "list", env=env, cwd=tmp_path)
    assert "upstream_error forbidden" in listed.stdout

    unknown = await asyncio.to_thread(
        cli, "watches", "renew", "nobody@example.com", env=env, cwd=tmp_path
    )
    assert unknown.returncode == 1
    assert "No connected account" in unknown.stderr


def test_watches_renew_needs_push_configured(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = cli("watches", "renew", "--all", env=cli_env, cwd=tmp_path)
    assert result.returncode == 2
    assert "TOKEN_BROKER_GMAIL_PUSH_TOPIC: not set" in result.stderr
    listed = cli("watches", "list", env=cli_env, cwd=tmp_path)
    assert listed.returncode == 0
    assert "push is off" in listed.stderr
