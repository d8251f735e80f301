"""A real `token-broker dev` process for the client's tests, and accounts connected to it.

One process serves every client test (starting it costs a few seconds): each test
connects the accounts it uses, through the sandbox's consent page as a browser would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.hygiene import ARTIFACTS, register_secret
from tests.support.processes import free_port


def wait_until(predicate: Callable[[], Any], *, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.05)


class DevBroker:
    """`token-broker dev` on a free port: its URL, its API key, and its sandbox's controls."""

    def __init__(self, data_dir: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.sandbox = f"{self.url}/sandbox"
        self._stdout = data_dir.parent / f"dev-client-{port}.out"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "token_broker", "dev", "--port", str(port),
             "--data-dir", str(data_dir)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=self._stdout.open("w"),
            stderr=(ARTIFACTS / f"dev-client-{port}.log").open("w"),
            cwd=data_dir.parent,
        )  # fmt: skip
        self.api_key = register_secret(
            wait_until(self._printed_key, within=60, what="dev mode printed its key")
        )
        wait_until(self._ready, within=60, what="dev mode became ready")
        self.http = httpx.Client(timeout=30)

    def _printed_key(self) -> str | None:
        if self.process.poll() is not None:
            raise RuntimeError("token-broker dev exited; see .artifacts/dev-client-*.log")
        for line in self._stdout.read_text().splitlines():
            if "export TB_KEY=" in line:
                return line.split("=", 1)[1].strip()
        return None

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def connect(self, email: str, *, mailbox_size: int | None = None) -> None:
        """Connect `email` as its user would: start, consent at the sandbox, follow the callback."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if mailbox_size is not None:
            self.http.post(
                f"{self.sandbox}/_sandbox/users",
                json={"email": email, "mailbox_size": mailbox_size},
            ).raise_for_status()
        started = self.http.post(
            f"{self.url}/v1/authorizations", json={"login_hint": email}, headers=headers
        )
        assert started.status_code == 201, started.text
        url = started.json()["authorization_url"]
        params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        consent = self.http.post(
            url.split("?", 1)[0], data={**params, "email": email, "decision": "allow"}
        )
        assert consent.status_code == 302, consent.text
        location = consent.headers["location"]
        register_secret(parse_qs(urlsplit(location).query)["code"][0])
        landing = self.http.get(location)
        assert "Account connected" in landing.text, landing.text

    def revoke_at_google(self, email: str) -> None:
        """The user revokes the broker's access in their Google account settings."""
        self.http.post(f"{self.sandbox}/_sandbox/users/{email}/revoke").raise_for_status()

    def expire_at_google(self, email: str) -> None:
        """Google stops accepting the account's access tokens (they are still cached)."""
        self.http.post(f"{self.sandbox}/_sandbox/users/{email}/expire-tokens").raise_for_status()

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    broker = DevBroker(tmp_path_factory.mktemp("client") / "dev-data")
    try:
        yield broker
    finally:
        broker.stop()
