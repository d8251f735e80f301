"""Dev mode hears revocations from the sandbox first: revoking a grant in the sandbox's
control API revokes the account in the broker within two seconds, before any refresh,
and `token-broker risc status` reads the dev stream with the key dev mode wrote."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.end_to_end.test_dev import DevProcess
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import cli, free_port


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
