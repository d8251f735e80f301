"""Test harness: fixtures live in `tests/support/`, which tests import by name.

- `support/hygiene.py`: loopback only, and the scan of every log for secrets;
- `support/databases.py`: both databases, migrated once per run, emptied per test;
- `support/brokers.py`: settings, brokers over ASGI, API keys, respx-faked Google;
- `support/provider.py`: the sandbox as a real server, and a broker wired to it;
- `support/browser.py`: a real chromium (Playwright) for pages a person sees;
- `support/flow.py`, `processes.py`, `dev.py`, `servers.py`, `google_fakes.py`,
  `polling.py`: the connect flow as a browser drives it, brokers and dev mode as
  processes, real servers, Google's answers, and waiting with a deadline.
- `support/push.py`: the sandbox's Pub/Sub pushing into a broker, and a webhook receiver.
"""

from __future__ import annotations

import pytest

from tests.support import hygiene

pytest_plugins = [
    "tests.support.databases",
    "tests.support.brokers",
    "tests.support.provider",
    "tests.support.redis_server",
    "tests.support.browser",
    "tests.support.push",
]


def pytest_configure(config: pytest.Config) -> None:
    hygiene.configure(config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    hygiene.scan_logs(session)
