"""The broker's pages as a person sees them, in a real browser (Debian's chromium).

Chromium follows a connect flow that ends with a required scope unticked, the page
offers "Try again", and the person tries again and connects. Checked as a browser
enforces it: no Content-Security-Policy violation on any broker page (nothing
inline), no Referer carrying the callback's code to the page it links to, and no
other site able to frame a broker page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from playwright.async_api import Browser, ConsoleMessage, Request, async_playwright

from tests.support.hygiene import ARTIFACTS, register_secret
from tests.support.processes import free_port
from tests.support.provider import Provider
from tests.support.servers import serve
from token_broker.app import create_app
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        await browser.close()


async def test_pages_in_a_real_browser(
    provider: Provider, settings_factory: Callable[..., Settings], chromium: Browser
) -> None:
    port = free_port()
    broker_url = f"http://127.0.0.1:{port}"
    callback = f"{broker_url}/v1/oauth/callback"
    next(iter(provider.state.clients.values())).redirect_uris.add(callback)
    provider.state.add_user("alice@example.com")
    app = create_app(settings_factory(**provider.settings(), redirect_uri=callback))
    async with serve(app, port=port), httpx.AsyncClient(base_url=broker_url) as http:
        _, admin = await ClientService(app.state.broker.database).create(
            "app", [p.value for p in Permission]
        )
        headers = {"Authorization": f"Bearer {register_secret(admin)}"}
        started = await http.post(
            "/v1/authorizations", json={"login_hint": "alice@example.com"}, headers=headers
        )
        register_secret(started.json()["state"])

        page = await chromium.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(_text(message)))
        to_broker: list[Request] = []
        page.on("request", lambda request: _collect(request, broker_url, to_broker))

        await page.goto(started.json()["authorization_url"])
        await page.uncheck(f'input[name=granted_scope][value="{GMAIL}"]')
        await page.click("button.allow")
        await page.wait_for_load_state()
        assert await page.title() == "Required scope not granted"
        callback = next(r for r in to_broker if "/v1/oauth/callback" in r.url)
        assert "code=" in callback.url
        register_secret(callback.url.split("code=")[1].split("&")[0])
        # The page took the code and state out of the address bar (its served script).
        await page.wait_for_function("!window.location.search")
        assert "code=" not in page.url
        await page.screenshot(path=str(ARTIFACTS / "page-scope-not-granted.png"))

        await page.click("a")  # "Try again": the broker's link, then the provider
        await page.click("button.allow")
        await page.wait_for_load_state()
        assert await page.title() == "Account connected"
        await page.screenshot(path=str(ARTIFACTS / "page-connected.png"))

        # Leaving the callback page (its address holds the code) told no one where from.
        try_again = next(r for r in to_broker if "/v1/oauth/reauthorize" in r.url)
        assert "referer" not in await try_again.all_headers()
        violations = [line for line in console if "Content Security Policy" in line]
        assert violations == [], violations

        # No other site (another origin on this machine) may frame a broker page.
        framing = FastAPI()

        @framing.get("/")
        async def framing_page() -> HTMLResponse:
            return HTMLResponse(f"<iframe src='{broker_url}/v1/oauth/reauthorize?link=x'></iframe>")

        async with serve(framing) as other_site:
            await page.goto(other_site)
            await page.wait_for_load_state()
            frame = page.frames[1]
            assert "Invalid re-authorization link" not in await _frame_text(frame)
        assert any("frame-ancestors 'none'" in line for line in console), console
        await page.close()


def _text(message: ConsoleMessage) -> str:
    return f"{message.type}: {message.text}"


def _collect(request: Request, broker_url: str, into: list[Request]) -> None:
    if request.url.startswith(broker_url) and request.is_navigation_request():
        into.append(request)


async def _frame_text(frame: object) -> str:
    try:
        return str(await frame.inner_text("body"))  # type: ignore[attr-defined]
    except Exception:
        return ""
