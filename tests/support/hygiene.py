"""The suite's hygiene: tests reach only loopback, and no secret may reach any log of the run.

Every secret a test hands the broker is registered; when the session ends, the
run's logs (this process's and those of every broker process it started) are
scanned for them and for token-shaped text, and the run fails if any is found.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).parents[1] / ".artifacts"
RUN_LOG = ARTIFACTS / "test-run.log"

# Every secret a test hands the broker is registered here; the run's log must not
# contain any of them (checked when the session ends).
KNOWN_SECRETS: set[str] = set()
SECRET_SHAPES = re.compile(r"ya29\.[\w.-]{8,}|1//[\w.-]{8,}|tbk_[A-Za-z0-9_-]{43}")


def register_secret(value: str) -> str:
    KNOWN_SECRETS.add(value)
    return value


_LOOPBACK = {"127.0.0.1", "localhost", "::1", "broker.test", None}


def _loopback_only(getaddrinfo: Any) -> Any:
    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOOPBACK and not str(name).startswith("127."):
            raise OSError(f"test tried to reach {name!r}; tests talk only to 127.0.0.1")
        return getaddrinfo(host, *args, **kwargs)

    return guarded


def configure(config: pytest.Config) -> None:
    # Tests talk only to loopback: a lookup of any other name fails the test at once.
    socket.getaddrinfo = _loopback_only(socket.getaddrinfo)
    # The suite configures the broker explicitly; a developer's own settings must not leak in.
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_") and not name.startswith("TOKEN_BROKER_TEST_"):
            del os.environ[name]
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("*.log"):
        old.unlink()
    handler = logging.FileHandler(RUN_LOG, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("aiosqlite", "asyncio", "httpx", "httpcore", "hpack", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Google's client libraries and the fuzzer, which tests drive as callers: at DEBUG
    # they log request lines and token responses of their own, which are not the broker's.
    for caller in ("urllib3", "requests_oauthlib", "oauthlib", "google", "googleapiclient"):
        logging.getLogger(caller).setLevel(logging.WARNING)


def scan_logs(session: pytest.Session) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = "".join(
        path.read_text(encoding="utf-8", errors="replace") for path in ARTIFACTS.glob("*.log")
    )
    leaks = [secret[:6] + "…" for secret in KNOWN_SECRETS if secret and secret in text]
    leaks += [match.group(0)[:6] + "…" for match in SECRET_SHAPES.finditer(text)]
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"secret hygiene: {len(leaks)} secret(s) in {ARTIFACTS}/*.log: {leaks[:5]}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
