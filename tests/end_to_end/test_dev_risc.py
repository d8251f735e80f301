"""Grant health in dev mode: revoking a grant in the sandbox's control API revokes the
account in the broker within two seconds, before any refresh, and `token-broker risc
status` reads the dev stream with the key dev mode wrote; in testing status a grant shows
its end 7 days after consent and `account.expiring` goes out."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.end_to_end.test_dev import DevProcess
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import cli, free_port
from tests.support.servers import Receiver, serve


async def test_a_revocation_in_the_sandbox_reaches_dev_mode_by_risc(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev-data"
    dev = DevProcess(data_dir, free_port())
    try:
        key = await dev.key()
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=dev.url, headers=headers) as client,
            httpx.AsyncClient() as browser,
        ):
            started = await client.post(
                "/v1/authorizations", json={"login_hint": "alice@example.com"}
            )
            url = started.json()["authorization_url"]
            params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            consent = await browser.post(
                url.split("?")[0],
                data={**params, "email": "alice@example.com", "decision": "allow"},
            )
            assert (await browser.get(consent.headers["location"])).status_code == 200
            token = await client.get("/v1/accounts/alice@example.com/access-token")
            register_secret(token.json()["access_token"])
            await browser.delete(f"{dev.url}/sandbox/_sandbox/counters")

            revoked_at = time.monotonic()
            await browser.post(f"{dev.url}/sandbox/_sandbox/users/alice@example.com/revoke")

            async def revoked() -> bool:
                account = await client.get("/v1/accounts/alice@example.com")
                return account.json()["status"] == "revoked"

            await eventually(revoked, within=2.0)
            assert time.monotonic() - revoked_at < 2.0
            refused = await client.get("/v1/accounts/alice@example.com/access-token")
            assert refused.status_code == 409
            assert refused.json()["status_reason"] == "revoked_by_user"
            counters = (await browser.get(f"{dev.url}/sandbox/_sandbox/counters")).json()
            assert counters["calls"].get("token:refresh_token", 0) == 0

        status = await asyncio.to_thread(
            cli,
            "risc",
            "status",
            env={
                "TOKEN_BROKER_RISC_SERVICE_ACCOUNT_FILE": str(
                    data_dir / "risc-service-account.json"
                ),
                "TOKEN_BROKER_RISC_API_BASE": f"{dev.url}/sandbox",
            },
            cwd=tmp_path,
        )
        assert status.returncode == 0, status.stderr
        assert f"receiver  {dev.url}/v1/risc" in status.stdout
        assert (data_dir / "risc-service-account.json").stat().st_mode & 0o077 == 0
    finally:
        dev.stop()


async def test_a_testing_status_grant_is_seen_coming_in_dev_mode(tmp_path: Path) -> None:
    receiver = Receiver()
    secret = register_secret("whsec-dev-expiring")
    async with serve(receiver.app, lifespan="off") as hook_url:
        dev = DevProcess(
            tmp_path / "dev-data",
            free_port(),
            env={
                "TOKEN_BROKER_GOOGLE_PUBLISHING_STATUS": "testing",
                "TOKEN_BROKER_EXPIRING_NOTICE_SECONDS": str(8 * 86_400),
                "TOKEN_BROKER_GRANT_HEALTH_INTERVAL_SECONDS": "1",
                "TOKEN_BROKER_WEBHOOK_URL": f"{hook_url}/hook",
                "TOKEN_BROKER_WEBHOOK_SECRET": secret,
            },
        )
        try:
            key = await dev.key()
            async with (
                httpx.AsyncClient(
                    base_url=dev.url, headers={"Authorization": f"Bearer {key}"}
                ) as client,
                httpx.AsyncClient() as browser,
            ):
                started = await client.post(
                    "/v1/authorizations", json={"login_hint": "alice@example.com"}
                )
                url = started.json()["authorization_url"]
                params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                consent = await browser.post(
                    url.split("?")[0],
                    data={**params, "email": "alice@example.com", "decision": "allow"},
                )
                assert (await browser.get(consent.headers["location"])).status_code == 200
                shown = (await client.get("/v1/accounts/alice@example.com")).json()
                granted = datetime.fromisoformat(shown["granted_at"].replace("Z", "+00:00"))
                ends = datetime.fromisoformat(shown["grant_expires_at"].replace("Z", "+00:00"))
                assert ends - granted == timedelta(days=7)

                def expiring() -> list[dict[str, object]]:
                    found = [json.loads(body) for _, body in receiver.received]
                    return [event for event in found if event["type"] == "account.expiring"]

                told = await eventually(expiring, within=15)
                assert told[0]["reason"] == "expired_testing"
        finally:
            dev.stop()
