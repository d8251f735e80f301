"""What the benchmarks share: processes pinned to cores, a Postgres database, wrk, tables.

Everything runs on 127.0.0.1: the sandbox provider stands in for Google.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bench.seed import Seeded, seed
from google_sandbox.browser import consent
from token_broker.store.sealing import Keyring

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ADMIN_URL = os.environ.get(
    "TOKEN_BROKER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
CLIENT_ID = "bench-client.apps.googleusercontent.com"
CLIENT_SECRET = "bench-client-secret"
SERVER_CORE = 0
LOAD_CORE = 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(command: list[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return command
    return ["taskset", "-c", str(core), *command]


class Process:
    """A server process with its log in bench/results/."""

    def __init__(
        self, name: str, command: list[str], *, env: dict[str, str] | None = None,
        core: int | None = None,
    ) -> None:  # fmt: skip
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = RESULTS / f"{name}.log"
        self._log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            pinned(command, core),
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_http(self, url: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not come up; see {self.log_path}")
            time.sleep(0.1)

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the process so far (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


# --------------------------------------------------------------------------- Postgres


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, migrated database for one benchmark run, dropped afterwards."""
    name = f"tb_bench_{uuid.uuid4().hex[:8]}"

    async def run(statement: str) -> None:
        engine = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(sa.text(statement))
        await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        subprocess.run(
            [sys.executable, "-m", "token_broker", "migrate"],
            env={**os.environ, "TOKEN_BROKER_DATABASE_URL": url},
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        yield url
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --------------------------------------------------------------------------- the system


@dataclass
class System:
    """A sandbox provider process and the settings brokers need to use it."""

    sandbox: Process
    sandbox_url: str
    database_url: str
    keys: str

    def broker_env(self, **extra: str) -> dict[str, str]:
        sandbox = self.sandbox_url
        env = {
            "TOKEN_BROKER_DATABASE_URL": self.database_url,
            "TOKEN_BROKER_ENCRYPTION_KEYS": self.keys,
            "TOKEN_BROKER_GOOGLE_CLIENT_ID": CLIENT_ID,
            "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
            "TOKEN_BROKER_REDIRECT_URI": "http://127.0.0.1/v1/oauth/callback",
            "TOKEN_BROKER_ISSUER": sandbox,
            "TOKEN_BROKER_AUTH_URI": f"{sandbox}/o/oauth2/v2/auth",
            "TOKEN_BROKER_TOKEN_URI": f"{sandbox}/token",
            "TOKEN_BROKER_USERINFO_URI": f"{sandbox}/v1/userinfo",
            "TOKEN_BROKER_REVOKE_URI": f"{sandbox}/revoke",
            "TOKEN_BROKER_JWKS_URI": f"{sandbox}/oauth2/v3/certs",
            "TOKEN_BROKER_GMAIL_API_BASE": sandbox,
            "TOKEN_BROKER_LOG_FORMAT": "json",
            "TOKEN_BROKER_KEEPALIVE_ENABLED": "false",
            # The benchmarks force refreshes to measure them: no throttle between them.
            "TOKEN_BROKER_FORCED_REFRESH_INTERVAL_SECONDS": "0",
        }
        env.update({f"TOKEN_BROKER_{k.upper()}": v for k, v in extra.items()})
        return env

    def start_broker(self, name: str, *, core: int | None = None, **extra: str) -> Broker:
        port = free_port()
        process = Process(
            name,
            [sys.executable, "-m", "token_broker", "serve", "--port", str(port)],
            env=self.broker_env(**extra),
            core=core,
        )
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/readyz")
        return Broker(process, url)

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.sandbox_url}/_sandbox{path}", timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def seed(self, count: int, *, expires_in: int = 3600, start: int = 0) -> list[Seeded]:
        """`count` valid accounts (`bench.seed`): live grants here, sealed rows there."""
        return asyncio.run(
            seed(
                self.database_url, self.sandbox_url, CLIENT_ID, count, Keyring.parse(self.keys),
                expires_in=expires_in, start=start,
            )
        )  # fmt: skip

    def api_key(self, name: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "token_broker", "clients", "create", name,
             "--permission", "tokens:read", "--permission", "messages:read",
             "--permission", "accounts:write", "--permission", "accounts:read"],
            env={**os.environ, **self.broker_env()},
            check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        return result.stdout.strip()


@dataclass
class Broker:
    process: Process
    url: str

    def stop(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def system(*, sandbox_core: int | None = LOAD_CORE) -> Iterator[System]:
    with postgres_database() as database_url:
        port = free_port()
        sandbox = Process(
            "sandbox",
            [sys.executable, "-m", "google_sandbox", "--port", str(port),
             "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
            core=sandbox_core,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            sandbox.wait_http(f"{url}/.well-known/openid-configuration")
            yield System(sandbox, url, database_url, Keyring.generate_entry("bench"))
        finally:
            sandbox.stop()


async def connect_account(broker_url: str, key: str, email: str) -> str:
    """Connect `email` through the broker and the sandbox; returns its subject id."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as http:
        started = await http.post(
            f"{broker_url}/v1/authorizations", json={"login_hint": email}, headers=headers
        )
        started.raise_for_status()
        answer = await consent(http, started.json()["authorization_url"], email=email)
        callback = await http.get(
            f"{broker_url}/v1/oauth/callback",
            params={"code": answer["code"], "state": answer["state"]},
        )
        callback.raise_for_status()
        account = await http.get(f"{broker_url}/v1/accounts/{email}", headers=headers)
        return str(account.json()["subject"])


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("this benchmark needs wrk (Debian/Ubuntu: apt-get install wrk)")
    return found


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int = 0


def _millis(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    headers: dict[str, str],
    script: Path | None = None,
) -> WrkResult:
    command = [ensure_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command += ["-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        pinned(command, LOAD_CORE), check=True, capture_output=True, text=True
    ).stdout
    (RESULTS / "last-wrk.txt").write_text(output)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _millis(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _millis(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    requests = int(total.group(1)) if total else 0
    return WrkResult(rps, p50, p99, int(bad.group(1)) if bad else 0, requests)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --------------------------------------------------------------------------- a storm


async def storm(
    targets: Sequence[str], path: str, headers: dict[str, str], callers: int
) -> list[float]:
    """`callers` requests at once, spread over `targets`; each caller's latency in seconds.

    Connections are opened first and the requests written together, so the times are
    the brokers', not a Python client's queue.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    ).encode()
    # Kept-alive connections, as an internal service's HTTP pool would hold them.
    connections = []
    for index in range(callers):
        host, port = targets[index % len(targets)].removeprefix("http://").split(":")
        connections.append(await asyncio.open_connection(host, int(port)))
    started = time.perf_counter()
    for _, writer in connections:
        writer.write(request)

    async def answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"storm answer: {status!r}")
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        elapsed = time.perf_counter() - started
        writer.close()
        return elapsed

    return await asyncio.gather(*(answered(r, w) for r, w in connections))


@dataclass
class Answered:
    status: int
    seconds: float  # from the storm's start to this answer
    latency: float  # from this request's sending to its answer


async def storm_many(
    requests: Sequence[tuple[str, str]], headers: dict[str, str], connections: int
) -> list[Answered]:
    """Every (target, path) request answered, over `connections` kept-alive connections
    spread over the targets, each sending its target's next request as soon as its last
    is answered (each target's requests in the order given). Plain HTTP/1.1 on asyncio
    streams: the load generator costs little, so the times are the brokers'.
    """
    targets = sorted({url for url, _ in requests})
    queues = {target: iter([path for url, path in requests if url == target]) for target in targets}
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    answers: list[Answered] = []
    opened = [
        await asyncio.open_connection(*targets[i % len(targets)].removeprefix("http://").split(":"))
        for i in range(connections)
    ]
    started = time.perf_counter()

    async def connection(target: str, reader: asyncio.StreamReader, writer: Any) -> None:
        try:
            for path in queues[target]:  # shared: each request is sent once
                sent = time.perf_counter()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
                status = await _read(reader)
                now = time.perf_counter()
                answers.append(Answered(status, now - started, now - sent))
        finally:
            writer.close()

    await asyncio.gather(
        *(connection(targets[i % len(targets)], r, w) for i, (r, w) in enumerate(opened))
    )
    return answers


async def _read(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 answer with a Content-Length body; its status."""
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
