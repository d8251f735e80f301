"""Pages a person sees, checked in a real browser: Debian's chromium driven by Playwright.

Browser downloads do not work here, so Playwright launches /usr/bin/chromium
(`apt-get install chromium`; `.ci/run` installs it when missing). Without it the
browser tests are skipped, unless TOKEN_BROKER_TEST_REQUIRE_BROWSER=1 (CI), which
makes that a failure. Screenshots land in `.artifacts/screenshots/`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.hygiene import ARTIFACTS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
REQUIRE_BROWSER = os.environ.get("TOKEN_BROKER_TEST_REQUIRE_BROWSER") == "1"
SCREENSHOTS = ARTIFACTS / "screenshots"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (once per module, before any I/O)
        if REQUIRE_BROWSER:
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@dataclass
class Visit:
    """A fresh page that remembers what it asked for and what it complained about."""

    page: Any
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def other_origins(self, origin: str) -> list[str]:
        own = urlsplit(origin).netloc
        return [url for url in self.requests if urlsplit(url).netloc not in ("", own)]

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
async def visit(browser: Any) -> AsyncIterator[Visit]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = await context.new_page()
    seen = Visit(page)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on(
        "console",
        lambda message: (
            seen.console_errors.append(f"{message.text} ({message.location.get('url')})")
            if message.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
    yield seen
    await context.close()
