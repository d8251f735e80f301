"""`token-broker dev` as a newcomer runs it: the printed steps connect an account and list mail."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.dev import DevProcess
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import free_port


async def test_the_printed_steps_work_and_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev-data"
    dev = DevProcess(data_dir, free_port())
    try:
        key = await dev.key()
        banner = dev.stdout.read_text()
        assert f"{dev.url}/docs" in banner
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=dev.url, headers=headers) as client,
            httpx.AsyncClient() as browser,
        ):
            # Discovery under the /sandbox mount names endpoints that answer (not 404s).
            doc = (await browser.get(f"{dev.url}/sandbox/.well-known/openid-configuration")).json()
            assert doc["issuer"] == f"{dev.url}/sandbox"
            assert doc["jwks_uri"] == f"{dev.url}/sandbox/oauth2/v3/certs"
            assert len((await browser.get(doc["jwks_uri"])).json()["keys"]) == 2
            refused = await browser.post(doc["token_endpoint"], data={"grant_type": "x"})
            assert refused.json()["error"] == "invalid_client"
            assert (await browser.get(doc["userinfo_endpoint"])).status_code == 401
            assert (await browser.get(doc["authorization_endpoint"])).status_code == 401
            # 1. Start connecting an account.
            started = await client.post(
                "/v1/authorizations", json={"login_hint": "alice@example.com"}
            )
            assert started.status_code == 201
            url = started.json()["authorization_url"]
            assert url.startswith(f"{dev.url}/sandbox/o/oauth2/v2/auth?")
            # 2. The consent page, and Allow (the form post a browser would make).
            page = await browser.get(url)
            assert page.status_code == 200
            assert "alice@example.com" in page.text
            params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            consent = await browser.post(
                url.split("?")[0],
                data={**params, "email": "alice@example.com", "decision": "allow"},
            )
            landing = await browser.get(consent.headers["location"])
            assert landing.status_code == 200
            assert "Account connected" in landing.text
            # 3. A token, and the listing.
            token = await client.get("/v1/accounts/alice@example.com/access-token")
            assert token.status_code == 200
            register_secret(token.json()["access_token"])
            listed = await client.get(
                "/v1/accounts/alice@example.com/messages", params={"q": "is:unread"}
            )
            assert listed.status_code == 200
            assert listed.json()["count"] > 0
    finally:
        assert dev.stop() in (0, -signal.SIGTERM)

    # Restarted: the keyring, the database and the sandbox's grants are all still there.
    again = DevProcess(data_dir, free_port())
    try:
        key = await again.key()
        async with httpx.AsyncClient(
            base_url=again.url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            refreshed = await client.get(
                "/v1/accounts/alice@example.com/access-token", params={"force_refresh": "true"}
            )
            assert refreshed.status_code == 200, refreshed.text
            register_secret(refreshed.json()["access_token"])
            stale = await client.get(
                "/v1/accounts", headers={"Authorization": "Bearer " + key[:-1] + "x"}
            )
            assert stale.status_code == 401
    finally:
        again.stop()


async def test_dev_refuses_a_production_looking_configuration(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "token_broker", "dev", "--data-dir", str(tmp_path / "d")],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TOKEN_BROKER_DATABASE_URL": "postgresql+asyncpg://prod@db/broker",
            "TOKEN_BROKER_GOOGLE_CLIENT_ID": "1234.apps.googleusercontent.com",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "looks like production" in result.stderr
    assert "TOKEN_BROKER_DATABASE_URL points at Postgres" in result.stderr
    assert "TOKEN_BROKER_GOOGLE_CLIENT_ID" in result.stderr
    assert not (tmp_path / "d").exists()


async def test_a_second_dev_changes_nothing_and_says_why(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev-data"
    first = DevProcess(data_dir, free_port())
    try:
        # The banner appears only once the server answers: no retry needed after it.
        key = await eventually(first.printed_key, within=30)
        async with httpx.AsyncClient(
            base_url=first.url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            assert (await client.get("/v1/accounts")).status_code == 200

            same_port = DevProcess(data_dir, first.port)
            assert await asyncio.to_thread(same_port.wait) == 2
            assert same_port.stdout.read_text() == ""  # no banner, no key
            assert "cannot listen on 127.0.0.1" in same_port.stderr.read_text()
            assert "--port" in same_port.stderr.read_text()

            same_folder = DevProcess(data_dir, free_port())
            assert await asyncio.to_thread(same_folder.wait) == 2
            assert same_folder.stdout.read_text() == ""
            refused = same_folder.stderr.read_text()
            assert "is in use by a running token-broker dev" in refused
            assert f"pid {first.process.pid}, serving {first.url}" in refused
            assert "--data-dir" in refused

            # The first instance's key and database were left alone.
            assert (await client.get("/v1/accounts")).status_code == 200
    finally:
        first.stop()
