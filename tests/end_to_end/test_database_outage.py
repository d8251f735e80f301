"""Postgres restarted while the broker serves: 503s while it is down, back by itself after.

This test stops and starts this machine's Postgres cluster (pg_ctlcluster), so it
runs only where that is possible (as root, with the Debian cluster tools).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually


@pytest.fixture(scope="module", params=["postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _cluster() -> list[str] | None:
    versions = (
        sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    )
    if not versions or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].parent.name, "main"]


def _postgres(action: str) -> None:
    cluster = _cluster()
    assert cluster is not None
    extra = ["-m", "fast"] if action == "stop" else []
    subprocess.run([*cluster, action, *extra], check=True, capture_output=True, timeout=120)


def _ready() -> bool:
    return (
        subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"], check=False, timeout=10
        ).returncode
        == 0
    )


@pytest.fixture
def restartable_postgres() -> Iterator[None]:
    if _cluster() is None:
        pytest.skip("needs root and pg_ctlcluster to stop and start Postgres")
    try:
        yield
    finally:
        if not _ready():
            _postgres("start")
        for _ in range(120):
            if _ready():
                break
            time.sleep(0.5)  # teardown of a stopped server, not synchronisation of a test


async def test_requests_fail_cleanly_while_postgres_is_down_and_recover(
    restartable_postgres: None, live: Live
) -> None:
    assert (await live.connect()).status_code == 200
    subject = live.provider.state.users["alice@example.com"].sub
    headers = await live.headers()
    token_url = f"/v1/accounts/{subject}/access-token"
    warm = await live.broker.client.get(token_url, headers=headers)
    assert warm.status_code == 200
    register_secret(warm.json()["access_token"])

    await asyncio.to_thread(_postgres, "stop")
    try:
        ready = await live.broker.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unreachable")
        # A cached token needs no database: still served.
        cached = await live.broker.client.get(token_url, headers=headers)
        assert cached.status_code == 200
        # Anything that needs it answers a documented 503, never a 500.
        for path in ("/v1/accounts", f"/v1/accounts/{subject}"):
            response = await live.broker.client.get(path, headers=headers)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "database_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        forced = await live.broker.client.get(
            token_url, params={"force_refresh": "true"}, headers=headers
        )
        assert forced.status_code == 503
        assert forced.json()["code"] == "database_unavailable"
    finally:
        await asyncio.to_thread(_postgres, "start")

    async def ready_again() -> bool:
        return (await live.broker.client.get("/readyz")).status_code == 200

    await eventually(ready_again, within=60, interval=0.25)
    listed = await live.broker.client.get("/v1/accounts", headers=headers)
    assert listed.status_code == 200
    assert [a["subject"] for a in listed.json()["items"]] == [subject]
    refreshed = await live.broker.client.get(
        token_url, params={"force_refresh": "true"}, headers=headers
    )
    assert refreshed.status_code == 200
    register_secret(refreshed.json()["access_token"])
