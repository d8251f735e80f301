"""`token-broker dev` as a process, the way a newcomer starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.support.hygiene import ARTIFACTS, register_secret
from tests.support.polling import eventually


class DevProcess:
    def __init__(
        self,
        data_dir: Path,
        port: int,
        env: dict[str, str] | None = None,
        *,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        tag = f"dev-{port}-{uuid.uuid4().hex[:6]}"
        self.stdout = data_dir.parent / f"{tag}.out"
        self.stderr = ARTIFACTS / f"{tag}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "token_broker", "dev", "--port", str(port),
             "--data-dir", str(data_dir), *args],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
            stdout=self.stdout.open("w"),
            stderr=self.stderr.open("w"),
            cwd=data_dir.parent,
        )  # fmt: skip

    def printed_key(self) -> str | None:
        for line in self.stdout.read_text().splitlines():
            if "export TB_KEY=" in line:
                return register_secret(line.split("=", 1)[1].strip())
        return None

    async def key(self) -> str:
        key = await eventually(self.printed_key, within=30)
        async with httpx.AsyncClient() as client:

            async def up() -> bool:
                try:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, within=30)
        return str(key)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)
