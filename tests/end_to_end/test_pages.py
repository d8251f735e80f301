"""The pages a person sees, in a real browser against `token-broker dev`: the API docs (offline,
Authorize works), the sandbox's docs, and the connect flow's pages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.browser import Visit
from tests.support.dev import DevProcess
from tests.support.processes import free_port

ACCOUNTS = "#operations-accounts-list_accounts_v1_accounts_get"


@pytest.fixture(scope="module")
async def dev(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[DevProcess, str]]:
    process = DevProcess(tmp_path_factory.mktemp("pages") / "dev-data", free_port())
    try:
        yield process, await process.key()
    finally:
        process.stop()


async def start_authorization(dev: tuple[DevProcess, str], email: str) -> str:
    process, key = dev
    async with httpx.AsyncClient(base_url=process.url) as client:
        started = await client.post(
            "/v1/authorizations",
            json={"login_hint": email},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert started.status_code == 201, started.text
    return str(started.json()["authorization_url"])


async def test_docs_render_offline_and_authorize_sends_the_key(
    dev: tuple[DevProcess, str], visit: Visit
) -> None:
    process, key = dev
    page = visit.page
    await page.goto(process.url + "/")
    assert page.url == process.url + "/docs"
    await page.wait_for_selector(".swagger-ui .info .title")
    assert "Token Broker" in await page.inner_text(".swagger-ui .info .title")

    await page.click("button.authorize")
    await page.fill(".auth-container input", key)
    await page.click(".auth-btn-wrapper button.authorize")
    await page.click(".auth-btn-wrapper button.btn-done")
    await page.click(f"{ACCOUNTS} .opblock-summary")
    await page.click(f"{ACCOUNTS} button.try-out__btn")
    await page.click(f"{ACCOUNTS} button.execute")
    status = page.locator(f"{ACCOUNTS} .live-responses-table tbody .response-col_status")
    await status.wait_for()
    assert (await status.inner_text()).strip() == "200"
    await visit.screenshot("docs-authorized")

    assert visit.other_origins(process.url) == []
    assert visit.console_errors == []


async def test_sandbox_docs_render(dev: tuple[DevProcess, str], visit: Visit) -> None:
    process, _ = dev
    await visit.page.goto(process.url + "/sandbox/")
    assert visit.page.url == process.url + "/sandbox/docs"
    await visit.page.wait_for_selector(".swagger-ui .info .title")
    assert "sandbox" in (await visit.page.inner_text(".swagger-ui .info .title")).lower()
    await visit.page.wait_for_selector("[data-path='/_sandbox/faults']")
    await visit.screenshot("sandbox-docs")
    assert visit.other_origins(process.url) == []
    assert visit.console_errors == []


async def test_connecting_leaves_no_code_in_the_address_bar(
    dev: tuple[DevProcess, str], visit: Visit
) -> None:
    page = visit.page
    await page.goto(await start_authorization(dev, "alice@example.com"))
    await page.click("button.allow")
    await page.wait_for_selector("h1:text('Account connected')")
    assert "alice@example.com" in await page.inner_text("body")
    await page.wait_for_function("!location.search")
    assert page.url == dev[0].url + "/v1/oauth/callback"
    assert await page.evaluate("history.length") <= 3
    await visit.screenshot("account-connected")
    assert visit.console_errors == []
    assert visit.page_errors == []


async def test_cancel_shows_access_denied_with_a_try_again_link(
    dev: tuple[DevProcess, str], visit: Visit
) -> None:
    page = visit.page
    await page.goto(await start_authorization(dev, "carol@example.com"))
    await page.click("button:text('Cancel')")
    await page.wait_for_selector("h1:text('Access denied')")
    await page.wait_for_function("!location.search")
    await visit.screenshot("access-denied")
    await page.click("a:text('Try again')")
    await page.wait_for_selector("button.allow")
    assert "carol@example.com" in await page.inner_text("form")
    await page.click("button.allow")
    await page.wait_for_selector("h1:text('Account connected')")
    assert visit.page_errors == []
