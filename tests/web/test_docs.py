"""The docs pages work offline and under `script-src 'self'`: every asset is served locally."""

from __future__ import annotations

import re
import warnings

import httpx
import pytest

from api_docs.pages import ASSETS
from tests.support.brokers import Broker


async def test_root_sends_a_person_to_the_docs(broker: Broker) -> None:
    response = await broker.client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


async def test_docs_page_loads_only_local_assets_and_runs_no_inline_script(
    broker: Broker,
) -> None:
    page = await broker.client.get("/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts
    assert all(body.strip() == "" and 'src="/docs/assets/' in attrs for attrs, body in scripts)
    for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert url.startswith("/"), url
        assert (await broker.client.get(url)).status_code == 200, url


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("swagger-ui-bundle.js", "javascript"),
        ("start-swagger-ui.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ],
)
async def test_assets_come_from_the_installed_package(
    broker: Broker, name: str, content_type: str
) -> None:
    assert ASSETS[name].is_file()
    response = await broker.client.get(f"/docs/assets/{name}")
    assert response.status_code == 200
    assert content_type in response.headers["content-type"]
    assert response.content == ASSETS[name].read_bytes()


async def test_unknown_assets_are_404_problems(broker: Broker) -> None:
    response = await broker.client.get("/docs/assets/..%2Fpages.py")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_sandbox_docs_are_served_the_same_way_and_its_openapi_is_clean() -> None:
    from google_sandbox import SandboxState, create_sandbox_app

    app = create_sandbox_app(SandboxState())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test"
    ) as client:
        assert (await client.get("/")).headers["location"] == "/docs"
        page = await client.get("/docs")
        assert 'src="/docs/assets/start-swagger-ui.js"' in page.text
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FastAPI warns of duplicate operation ids
            spec = (await client.get("/openapi.json")).json()
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
