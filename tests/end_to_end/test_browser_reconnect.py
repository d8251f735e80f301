"""A re-authorization link as a person follows it, in a real browser (Debian's chromium).

The broker and the sandbox provider run as real servers on 127.0.0.1; chromium opens
the link from a 409, is sent to the provider's consent page, consents as someone
else (the broker's page says account_mismatch and nothing is stored), then opens the
same link again and consents as the right person (the page says connected).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from google_sandbox.browser import consent
from tests.support.hygiene import ARTIFACTS, register_secret
from tests.support.processes import free_port
from tests.support.provider import Provider
from tests.support.servers import serve
from token_broker.app import create_app
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        await browser.close()


async def test_a_reauthorization_link_in_a_real_browser(
    provider: Provider, settings_factory: Callable[..., Settings], chromium: Browser
) -> None:
    port = free_port()
    broker_url = f"http://127.0.0.1:{port}"
    callback = f"{broker_url}/v1/oauth/callback"
    next(iter(provider.state.clients.values())).redirect_uris.add(callback)
    provider.state.add_user("alice@example.com")
    provider.state.add_user("bob@example.com")
    app = create_app(settings_factory(**provider.settings(), redirect_uri=callback))
    async with serve(app, port=port), httpx.AsyncClient(base_url=broker_url) as http:
        database = app.state.broker.database
        _, admin = await ClientService(database).create("app", [p.value for p in Permission])
        _, reader = await ClientService(database).create("reader", ["tokens:read"])
        admin_headers = {"Authorization": f"Bearer {register_secret(admin)}"}
        reader_headers = {"Authorization": f"Bearer {register_secret(reader)}"}

        started = await http.post(
            "/v1/authorizations", json={"login_hint": "alice@example.com"}, headers=admin_headers
        )
        answer = await consent(http, started.json()["authorization_url"])
        register_secret(answer["code"])
        connected = await http.get(callback, params=answer)
        assert connected.status_code == 200
        provider.state.revoke_user("alice@example.com")
        refused = await http.get(
            "/v1/accounts/alice@example.com/access-token",
            params={"force_refresh": "true"},
            headers=reader_headers,
        )
        assert refused.status_code == 409
        link = refused.json()["authorization_url"]
        assert link.startswith(f"{broker_url}/v1/oauth/reauthorize?link=")

        page = await chromium.new_page()
        await page.goto(link)
        assert page.url.startswith(provider.url)  # sent on to the provider's consent page
        assert await page.is_checked('input[name=email][value="alice@example.com"]')
        await page.check('input[name=email][value="bob@example.com"]')
        await page.click("button.allow")
        await page.wait_for_load_state()
        await page.screenshot(path=str(ARTIFACTS / "reconnect-account-mismatch.png"))
        assert await page.title() == "A different Google account"
        assert "account_mismatch" in await page.inner_text("body")
        # "Try again": a link for the same account, still produced by the reader's request.
        again_link = str(await page.get_attribute("a", "href"))
        links = app.state.web.links
        first, retry = (links.read(url.split("link=")[1]) for url in (link, again_link))
        assert (retry.account_id, retry.client_id) == (first.account_id, first.client_id)

        await page.click("a")  # try again, as alice this time
        await page.click("button.allow")
        await page.wait_for_load_state()
        await page.screenshot(path=str(ARTIFACTS / "reconnect-connected.png"))
        assert await page.title() == "Account connected"
        assert "alice@example.com" in await page.inner_text("body")

        await page.goto(f"{broker_url}/v1/oauth/reauthorize?link=altered")
        assert await page.title() == "Invalid re-authorization link"
        await page.close()

        again = await http.get(
            "/v1/accounts/alice@example.com/access-token", headers=reader_headers
        )
        assert again.status_code == 200
        register_secret(again.json()["access_token"])
        accounts: Any = (await http.get("/v1/accounts", headers=admin_headers)).json()
        assert [a["email"] for a in accounts["items"]] == ["alice@example.com"]
