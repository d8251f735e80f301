"""The whole connect flow against the sandbox, as a user's browser and a caller drive it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlmodel import select

from google_sandbox.browser import consent
from tests.support.brokers import Broker
from tests.support.hygiene import register_secret
from tests.support.provider import Provider
from token_broker.services.api_keys import Permission
from token_broker.store.models import Account

# Where TEST_REDIRECT_URI says the broker is: its links point there.
BROKER_ORIGIN = "https://broker.example"


class Live:
    def __init__(self, provider: Provider, broker: Broker, browser: httpx.AsyncClient) -> None:
        self.provider = provider
        self.broker = broker
        self.browser = browser
        self._headers: dict[str, str] | None = None

    async def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = await self.broker.headers(*Permission)
        return self._headers

    async def start(self, **body: Any) -> dict[str, Any]:
        response = await self.broker.client.post(
            "/v1/authorizations", json=body, headers=await self.headers()
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def consent(self, authorization_url: str, **kwargs: Any) -> dict[str, str]:
        """Consent at `authorization_url`; a broker link is opened first, as a browser would."""
        if authorization_url.startswith(BROKER_ORIGIN):
            opened = await self.open_link(authorization_url)
            assert opened.status_code == 303, opened.text
            authorization_url = opened.headers["location"]
        answer = await consent(self.browser, authorization_url, **kwargs)
        if "code" in answer:
            register_secret(answer["code"])
        return answer

    async def callback(self, answer: dict[str, str]) -> httpx.Response:
        params = {k: v for k, v in answer.items() if not k.startswith("_")}
        return await self.broker.client.get("/v1/oauth/callback", params=params)

    async def connect(self, email: str = "alice@example.com", **start: Any) -> httpx.Response:
        started = await self.start(login_hint=email, **start)
        answer = await self.consent(started["authorization_url"], email=email)
        return await self.callback(answer)

    async def open_link(self, url: str) -> httpx.Response:
        """Open a broker link (`https://broker.example/...`) as the user's browser would."""
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == BROKER_ORIGIN, url
        return await self.broker.client.get(f"{parts.path}?{parts.query}")

    async def stored(self, subject: str) -> Account:
        async with self.broker.state.database.transaction() as session:
            return (await session.exec(select(Account).where(Account.subject == subject))).one()

    def register_provider_secrets(self) -> None:
        for grant in self.provider.state.grants.values():
            for token in grant.refresh_tokens | grant.rotated_refresh_tokens:
                register_secret(token)
        for token in self.provider.state.access_tokens:
            register_secret(token)
