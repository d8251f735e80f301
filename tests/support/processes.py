"""Brokers as real processes (`python -m service serve`) for multi-replica and crash tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.support.hygiene import ARTIFACTS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BrokerProcess:
    def __init__(
        self, env: dict[str, str], *, name: str, workers: int = 1, fd_limit: int | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        # util-linux's prlimit: at most `fd_limit` open files, soft and hard alike.
        limit = ["prlimit", f"--nofile={fd_limit}:{fd_limit}"] if fd_limit else []
        self.process = subprocess.Popen(
            [
                *limit,
                sys.executable,
                "-m",
                "token_broker",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent,
            # Its own process group: killing it takes its uvicorn workers along.
            start_new_session=True,
        )

    async def ready(self, within: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"broker exited: see {self.log_path}")
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"broker not ready: see {self.log_path}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the broker and any worker processes it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # nothing of it may outlive it
        self._log.close()
        return code

    def close(self) -> None:
        self.kill()
        self._log.close()


class SandboxProcess:
    """The sandbox provider as its own process (`python -m google_sandbox`)."""

    def __init__(self, *, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (ARTIFACTS / f"sandbox-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "google_sandbox", "--port", str(self.port),
             "--client-id", client_id, "--client-secret", client_secret,
             "--redirect-uri", redirect_uri],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent,
        )  # fmt: skip

    async def ready(self, within: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    discovery = await client.get(f"{self.url}/.well-known/openid-configuration")
                    if discovery.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.process.poll() is not None or loop.time() > deadline:
                    raise RuntimeError("sandbox did not start")
                await asyncio.sleep(0.05)

    def settings(self) -> dict[str, str]:
        return {
            "TOKEN_BROKER_ISSUER": self.url,
            "TOKEN_BROKER_AUTH_URI": f"{self.url}/o/oauth2/v2/auth",
            "TOKEN_BROKER_TOKEN_URI": f"{self.url}/token",
            "TOKEN_BROKER_USERINFO_URI": f"{self.url}/v1/userinfo",
            "TOKEN_BROKER_REVOKE_URI": f"{self.url}/revoke",
            "TOKEN_BROKER_JWKS_URI": f"{self.url}/oauth2/v3/certs",
            "TOKEN_BROKER_GMAIL_API_BASE": self.url,
        }

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "token_broker", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
