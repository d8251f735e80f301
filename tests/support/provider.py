"""The sandbox provider as a real server on 127.0.0.1, and a broker wired to it (`live`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support.brokers import TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_REDIRECT_URI
from token_broker.settings import Settings


@pytest.fixture
async def provider() -> AsyncIterator[Any]:
    """The sandbox provider as a real server on 127.0.0.1, with the test client registered."""
    from google_sandbox import SandboxState, create_sandbox_app
    from tests.support.servers import serve

    state = SandboxState(default_mailbox_size=300)
    state.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET, [TEST_REDIRECT_URI])
    async with serve(create_sandbox_app(state)) as url:
        state.issuer = url
        yield Provider(state, url)


class Provider:
    def __init__(self, state: Any, url: str) -> None:
        self.state = state
        self.url = url

    def settings(self) -> dict[str, Any]:
        return {
            "auth_uri": f"{self.url}/o/oauth2/v2/auth",
            "token_uri": f"{self.url}/token",
            "userinfo_uri": f"{self.url}/v1/userinfo",
            "revoke_uri": f"{self.url}/revoke",
            "jwks_uri": f"{self.url}/oauth2/v3/certs",
            "issuer": self.url,
            "gmail_api_base": self.url,
        }


@pytest.fixture
def live_settings() -> dict[str, Any]:
    """Extra settings for the `live` broker; test modules override this fixture."""
    return {}


@pytest.fixture
async def live(
    provider: Provider,
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    live_settings: dict[str, Any],
) -> Any:
    """A broker wired to the running sandbox provider."""
    from tests.support.flow import Live

    broker = await broker_factory(settings_factory(**provider.settings(), **live_settings))
    async with httpx.AsyncClient() as browser:
        yield Live(provider, broker, browser)
