"""A real `token-broker dev` process for the client's tests, and accounts connected to it;
and `broker_api`, a broker pinned with respx for the client's own rules.

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
import respx

from tests.client.broker_stub import BROKER
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


# Where the broker may send a user back to (TOKEN_BROKER_RETURN_TO_ALLOWLIST): an app's page.
APP_RETURN_TO = "https://app.example/connected"
# The most ids a JSON listing holds (200,000 by default): low enough to reach cheaply.
JSON_LISTING_MAX_MESSAGES = 2_000
# Scopes the dev broker may ask for, and the one a connect needs: gmail.metadata alone lets
# an account connect that lacks gmail.readonly, so a scope upgrade can add it.
GMAIL = "https://www.googleapis.com/auth/gmail."
READONLY, METADATA = GMAIL + "readonly", GMAIL + "metadata"
DEV_SCOPES = ("openid", "email", "profile", READONLY, METADATA)


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
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "TOKEN_BROKER_RETURN_TO_ALLOWLIST": APP_RETURN_TO,
                 "TOKEN_BROKER_JSON_LISTING_MAX_MESSAGES": str(JSON_LISTING_MAX_MESSAGES),
                 "TOKEN_BROKER_SCOPES": " ".join(DEV_SCOPES),
                 "TOKEN_BROKER_REQUIRED_SCOPES": METADATA},
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
        landing = self.consent(started.json()["authorization_url"], email)
        assert "Account connected" in landing.text, landing.text

    def consent(self, authorization_url: str, email: str, *, allow: bool = True) -> httpx.Response:
        """The user's browser at the sandbox's consent page, then at the broker's callback:
        the callback's answer (a page, or a 303 to `return_to`)."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        decision = "allow" if allow else "deny"
        consent = self.http.post(
            authorization_url.split("?", 1)[0],
            data={**params, "email": email, "decision": decision},
        )
        assert consent.status_code == 302, consent.text
        location = consent.headers["location"]
        for code in parse_qs(urlsplit(location).query).get("code", []):
            register_secret(code)
        return self.http.get(location)

    def add_message(self, email: str, subject: str) -> str:
        """A message arrives in the sandbox mailbox (INBOX, UNREAD); its id."""
        added = self.http.post(
            f"{self.sandbox}/_sandbox/users/{email}/mailbox/messages", json={"subject": subject}
        )
        added.raise_for_status()
        message_id: str = added.json()["message"]["id"]
        return message_id

    def mark_read(self, email: str, message_id: str) -> None:
        self.http.post(
            f"{self.sandbox}/_sandbox/users/{email}/mailbox/messages/{message_id}/modify",
            json={"removeLabelIds": ["UNREAD"]},
        ).raise_for_status()

    def delete_message(self, email: str, message_id: str) -> None:
        """The user deletes a message for good."""
        self.http.delete(
            f"{self.sandbox}/_sandbox/users/{email}/mailbox/messages/{message_id}"
        ).raise_for_status()

    def expire_history(self, email: str) -> None:
        """Gmail forgets the mailbox's history: every history id issued so far is 404."""
        self.http.post(
            f"{self.sandbox}/_sandbox/users/{email}/mailbox/history/expire"
        ).raise_for_status()

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


@pytest.fixture
def broker_api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BROKER, assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock
