"""Brokers for tests: settings pointing at loopback, an app driven over ASGI, API keys, and
Google's endpoints faked with respx.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.support.hygiene import register_secret
from token_broker.app import create_app
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.settings import Settings
from token_broker.store.sealing import Keyring

# Upstream endpoints in unit tests: loopback on a port nothing listens on, so a request
# that respx does not intercept fails locally instead of leaving the machine.
UPSTREAM = "http://127.0.0.1:9"
TEST_CLIENT_ID = "test-client.apps.googleusercontent.com"
TEST_CLIENT_SECRET = "GOCSPX-test-client-secret-0123456789"
TEST_REDIRECT_URI = "https://broker.example/v1/oauth/callback"
TEST_KEYS = register_secret(Keyring.generate_entry("test1"))
register_secret(TEST_CLIENT_SECRET)
register_secret(TEST_KEYS.split(":", 1)[1])


@pytest.fixture
def settings_factory(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "production",
            "database_url": database_url,
            "encryption_keys": SecretStr(TEST_KEYS),
            "google_client_id": TEST_CLIENT_ID,
            "google_client_secret": SecretStr(TEST_CLIENT_SECRET),
            "redirect_uri": TEST_REDIRECT_URI,
            "auth_uri": f"{UPSTREAM}/o/oauth2/v2/auth",
            "token_uri": f"{UPSTREAM}/token",
            "userinfo_uri": f"{UPSTREAM}/v1/userinfo",
            "revoke_uri": f"{UPSTREAM}/revoke",
            "jwks_uri": f"{UPSTREAM}/oauth2/v3/certs",
            "issuer": "https://accounts.google.com",
            "gmail_api_base": UPSTREAM,
            "return_to_allowlist": ("https://app.example/connected",),
            "api_key_cache_seconds": 5.0,
            "access_log": True,
            # Tests of refreshes force them back to back; the throttle of forced
            # refreshes is tested with it on (tests/services/test_forced_refresh.py).
            "forced_refresh_interval_seconds": 0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


class Broker:
    """A running app, an HTTP client to it, and helpers to make API keys."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def state(self) -> Any:
        return self.app.state.broker

    async def api_key(self, *permissions: Permission, name: str | None = None) -> str:
        granted = permissions or tuple(Permission)
        _, key = await ClientService(self.state.database).create(
            name or f"client-{uuid.uuid4().hex[:8]}", [p.value for p in granted]
        )
        return register_secret(key)

    async def headers(self, *permissions: Permission) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.api_key(*permissions)}"}


async def start_broker(settings: Settings, **options: Any) -> tuple[Any, Any, httpx.AsyncClient]:
    app = create_app(settings, **options)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    )
    return app, lifespan, client


@pytest.fixture
async def broker_factory(database_url: str) -> AsyncIterator[Callable[[Settings], Any]]:
    # Depends on database_url so brokers stop (and flush their audit) before the tables
    # are emptied for the next test.
    running: list[tuple[Any, httpx.AsyncClient]] = []

    async def make(settings: Settings, **options: Any) -> Broker:
        app, lifespan, client = await start_broker(settings, **options)
        running.append((lifespan, client))
        return Broker(app, client)

    yield make
    for lifespan, client in reversed(running):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def broker(broker_factory: Callable[[Settings], Any], settings: Settings) -> Broker:
    result: Broker = await broker_factory(settings)
    return result


@pytest.fixture
async def connected(broker: Broker, upstream: Any) -> Broker:
    """`broker` with one account connected through a respx-faked Google (exchange)."""
    from tests.support.google_fakes import token_body
    from token_broker.services.api_keys import Permission

    upstream.post("/token").respond(json=token_body())
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Aconnected"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == 200, response.text
    return broker


@pytest.fixture
async def upstream() -> AsyncIterator[Any]:
    """Google's endpoints faked with respx (JWKS preset); tests add the routes they need."""
    import respx

    from tests.support.google_fakes import SIGNING_KEY

    with respx.mock(base_url=UPSTREAM, assert_all_called=False, assert_all_mocked=True) as mock:
        mock.get("/oauth2/v3/certs").respond(json={"keys": [SIGNING_KEY.as_dict(private=False)]})
        yield mock


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    return {
        "TOKEN_BROKER_DATABASE_URL": database_url,
        "TOKEN_BROKER_ENCRYPTION_KEYS": TEST_KEYS,
        "TOKEN_BROKER_GOOGLE_CLIENT_ID": TEST_CLIENT_ID,
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": "GOCSPX-test-client-secret-0123456789",
        "TOKEN_BROKER_REDIRECT_URI": "https://broker.example/v1/oauth/callback",
        # Provider endpoints on loopback where nothing listens: nothing leaves the machine.
        "TOKEN_BROKER_ISSUER": UPSTREAM,
        **{
            f"TOKEN_BROKER_{name}": f"{UPSTREAM}/{name.lower()}"
            for name in ("AUTH_URI", "TOKEN_URI", "USERINFO_URI", "REVOKE_URI", "JWKS_URI")
        },
        "TOKEN_BROKER_GMAIL_API_BASE": UPSTREAM,
        "TOKEN_BROKER_FORCED_REFRESH_INTERVAL_SECONDS": "0",
    }
