"""Hearing it from Google first, end to end: the sandbox as a separate provider delivers
Cross-Account Protection events over HTTP to a broker serving on 127.0.0.1.

A grant revoked in the sandbox is revoked in the broker within two seconds, before any
refresh is attempted; every replica drops its cached token (LISTEN/NOTIFY); the stream
is registered, read and verified with `token-broker risc`, and `token-broker accounts
health` shows the result. Both databases (the replicas: Postgres).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.brokers import Broker
from tests.support.flow import Live
from tests.support.grants import account
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import cli
from tests.support.provider import Provider
from tests.support.servers import serve
from token_broker.google.risc import DOCUMENTED_EVENT_TYPES
from token_broker.google.risc_api import RiscStreamApi, ServiceAccount
from token_broker.google.transport import Upstream

ALICE = "alice@example.com"


async def service_account_file(provider: Provider, directory: Path) -> Path:
    async with httpx.AsyncClient() as http:
        key = (await http.post(f"{provider.url}/_sandbox/risc/service-accounts")).json()
    register_secret(key["private_key"])
    path = directory / "risc-service-account.json"
    path.write_text(json.dumps(key))
    return path


async def register(provider: Provider, receiver: str, directory: Path) -> None:
    account_key = ServiceAccount.from_file(await service_account_file(provider, directory))
    async with httpx.AsyncClient() as http:
        api = RiscStreamApi(Upstream(http), provider.url, account_key)
        await api.update(receiver, list(DOCUMENTED_EVENT_TYPES))


async def token(broker: Broker, subject: str, headers: dict[str, str]) -> httpx.Response:
    response = await broker.client.get(f"/v1/accounts/{subject}/access-token", headers=headers)
    if response.status_code == 200:
        register_secret(response.json()["access_token"])
    return response


async def test_a_grant_revoked_in_the_sandbox_is_revoked_within_two_seconds(
    live: Live, tmp_path: Path
) -> None:
    assert (await live.connect(ALICE)).status_code == 200
    subject = str(live.provider.state.users[ALICE].sub)
    headers = await live.headers()
    assert (await token(live.broker, subject, headers)).status_code == 200  # cached
    async with serve(live.broker.app, lifespan="off") as broker_url:
        await register(live.provider, f"{broker_url}/v1/risc", tmp_path)
        live.provider.state.calls.clear()
        started = time.monotonic()
        revoked = await live.browser.post(f"{live.provider.url}/_sandbox/users/{ALICE}/revoke")
        assert revoked.json() == {"revoked": 1}

        async def revoked_in_broker() -> bool:
            return (await account(live.broker, subject)).status == "revoked"

        await eventually(revoked_in_broker, within=2.0)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    refused = await token(live.broker, subject, headers)
    assert refused.status_code == 409
    assert refused.json()["status_reason"] == "revoked_by_user"
    # Google's token endpoint never saw a refresh: the broker heard it from RISC first.
    assert live.provider.state.calls["token:refresh_token"] == 0
    assert live.provider.state.calls["token"] == 0
    assert [status for _, _, status in live.provider.state.risc.deliveries] == ["202"]


async def test_every_replica_drops_its_cached_token(
    backend: str, live: Live, broker_factory: Any
) -> None:
    if backend != "postgres":
        pytest.skip("several replicas share a database only on Postgres")
    other = await broker_factory(live.broker.state.settings)
    assert (await live.connect(ALICE)).status_code == 200
    subject = str(live.provider.state.users[ALICE].sub)
    headers = await live.headers()
    for broker in (live.broker, other):
        assert (await token(broker, subject, headers)).status_code == 200  # cached in each
    live.provider.state.revoke_user(ALICE)
    signed = await live.browser.post(
        f"{live.provider.url}/_sandbox/risc/events",
        json={"type": "tokens-revoked", "email": ALICE, "deliver": False},
    )
    live.provider.state.calls.clear()
    accepted = await live.broker.client.post(
        "/v1/risc",
        content=signed.json()["token"],
        headers={"Content-Type": "application/secevent+jwt"},
    )
    assert accepted.status_code == 202

    async def refused_by_the_other() -> bool:
        return (await token(other, subject, headers)).status_code == 409

    await eventually(refused_by_the_other, within=2.0)
    assert live.provider.state.calls["token"] == 0


async def test_risc_cli_registers_reads_and_verifies_and_health_shows_the_result(
    live: Live, cli_env: dict[str, str], tmp_path: Path
) -> None:
    key_file = await service_account_file(live.provider, tmp_path)
    env = {
        **cli_env,
        "TOKEN_BROKER_RISC_SERVICE_ACCOUNT_FILE": str(key_file),
        "TOKEN_BROKER_RISC_API_BASE": live.provider.url,
    }

    async def run(*args: str, environment: dict[str, str] = env) -> Any:
        return await asyncio.to_thread(cli, *args, env=environment, cwd=tmp_path)

    missing = await run("risc", "status", environment=cli_env)
    assert missing.returncode == 2
    assert "TOKEN_BROKER_RISC_SERVICE_ACCOUNT_FILE: required" in missing.stderr
    not_registered = await run("risc", "status")
    assert not_registered.returncode == 1
    assert "HTTP 404: Project has no RISC configuration." in not_registered.stderr
    plain = await run("risc", "register", "--url", "http://broker.example/v1/risc")
    assert "HTTP 403: The delivery endpoint must be an HTTPS URL." in plain.stderr

    assert (await live.connect(ALICE)).status_code == 200
    assert (await live.connect("bob@example.com")).status_code == 200
    async with serve(live.broker.app, lifespan="off") as broker_url:
        registered = await run("risc", "register", "--url", f"{broker_url}/v1/risc")
        assert registered.returncode == 0, registered.stderr
        assert f"registered {broker_url}/v1/risc for 7 event types" in registered.stdout
        status = await run("risc", "status")
        assert status.returncode == 0, status.stderr
        assert f"receiver  {broker_url}/v1/risc" in status.stdout
        assert "status    enabled" in status.stdout
        assert "oauth/event-type/tokens-revoked" in status.stdout
        verified = await run("risc", "verify", "--state", "cli-check")
        assert verified.returncode == 0, verified.stderr
        assert "verification requested (state 'cli-check')" in verified.stdout
        await eventually(lambda: live.provider.state.risc.deliveries, within=5)
        disabled = await live.browser.post(
            f"{live.provider.url}/_sandbox/users/bob@example.com/disable",
            json={"reason": "hijacking"},
        )
        assert disabled.json() == {"told": 1}
        await eventually(lambda: len(live.provider.state.risc.deliveries) == 2, within=5)
    assert [status for _, _, status in live.provider.state.risc.deliveries] == ["202", "202"]
    for result in (registered, status, verified):
        assert "PRIVATE KEY" not in result.stdout + result.stderr

    health = await run("accounts", "health")
    assert health.returncode == 0, health.stderr
    lines = health.stdout.splitlines()
    assert lines[0] == (
        "2 accounts: 1 active, 0 revoked, 1 suspended; 0 grants end within 24h (times in UTC)"
    )
    bob_line = next(line for line in lines if line.startswith("bob@example.com"))
    assert "suspended" in bob_line
    assert "account_disabled_hijacking" in bob_line
    # Needing attention comes first.
    assert lines.index(bob_line) < next(
        index for index, line in enumerate(lines) if line.startswith(ALICE)
    )
    only = await run("accounts", "health", "--reason", "account_disabled_hijacking")
    assert ALICE not in only.stdout
