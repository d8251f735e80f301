"""OpenID Connect discovery: one variable configures every provider endpoint; the explicit
endpoint variables still win; a start without a usable document fails in one line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from google_sandbox.browser import consent
from tests.support.brokers import (
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    TEST_KEYS,
    TEST_REDIRECT_URI,
    Broker,
    start_broker,
)
from tests.support.hygiene import register_secret
from tests.support.processes import cli
from tests.support.provider import Provider
from token_broker.google.discovery import (
    DiscoveryFailed,
    ProviderEndpoints,
    discover_endpoints,
)
from token_broker.google.transport import Upstream
from token_broker.kit.retry import Backoff
from token_broker.settings import ConfigurationError, Settings, load_settings

ISSUER = "http://127.0.0.1:9/idp"
DOCUMENT = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "userinfo_endpoint": f"{ISSUER}/userinfo",
    "revocation_endpoint": f"{ISSUER}/revoke",
    "jwks_uri": f"{ISSUER}/jwks",
}
QUICK = Backoff(attempts=3, budget=5, initial=0.01, maximum=0.01, jitter=0)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, None),  # Google: its endpoints are built in, nothing is fetched
        ({"issuer": "https://accounts.google.com"}, None),
        ({"issuer": "accounts.google.com"}, None),
        ({"issuer": ISSUER}, f"{ISSUER}/.well-known/openid-configuration"),
        ({"issuer": ISSUER + "/"}, f"{ISSUER}/.well-known/openid-configuration"),
        ({"discovery_url": f"{ISSUER}/config"}, f"{ISSUER}/config"),
        (
            {"issuer": ISSUER, **{f: f"{ISSUER}/{f}" for f in ("auth_uri", "token_uri",
             "userinfo_uri", "revoke_uri", "jwks_uri")}},
            None,
        ),
    ],
)  # fmt: skip
def test_when_endpoints_are_discovered(values: dict[str, Any], expected: str | None) -> None:
    assert settings(**values).discovery_document_url == expected


def test_an_issuer_to_discover_from_must_be_a_url() -> None:
    with pytest.raises(ConfigurationError) as error:
        load_settings(_env_file=None, issuer="idp.example")
    assert error.value.problems[0].startswith("TOKEN_BROKER_ISSUER: expected the provider's")


async def discover(config: Settings) -> ProviderEndpoints:
    async with httpx.AsyncClient() as http:
        return await discover_endpoints(Upstream(http), config, backoff=QUICK)


async def test_one_variable_fills_every_endpoint_and_gmail_defaults_to_the_issuer() -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(f"{ISSUER}/.well-known/openid-configuration").respond(json=DOCUMENT)
        endpoints = await discover(settings(issuer=ISSUER))
    assert route.call_count == 1
    assert endpoints == ProviderEndpoints(
        issuer=ISSUER,
        auth_uri=f"{ISSUER}/authorize",
        token_uri=f"{ISSUER}/token",
        userinfo_uri=f"{ISSUER}/userinfo",
        revoke_uri=f"{ISSUER}/revoke",
        jwks_uri=f"{ISSUER}/jwks",
        gmail_api_base=ISSUER,
        discovered_from=f"{ISSUER}/.well-known/openid-configuration",
    )


async def test_explicit_variables_override_the_document() -> None:
    with respx.mock() as mock:
        mock.get(f"{ISSUER}/config").respond(json=DOCUMENT)
        endpoints = await discover(
            settings(
                discovery_url=f"{ISSUER}/config",
                token_uri="http://127.0.0.1:9/own-token",
                gmail_api_base="http://127.0.0.1:9/gmail-root",
            )
        )
    assert endpoints.issuer == ISSUER  # taken from the document
    assert endpoints.token_uri == "http://127.0.0.1:9/own-token"
    assert endpoints.auth_uri == f"{ISSUER}/authorize"
    assert endpoints.gmail_api_base == "http://127.0.0.1:9/gmail-root"


async def test_googles_document_keeps_googles_gmail() -> None:
    google = {**DOCUMENT, "issuer": "https://accounts.google.com"}
    with respx.mock() as mock:
        mock.get("http://127.0.0.1:9/google-config").respond(json=google)
        endpoints = await discover(settings(discovery_url="http://127.0.0.1:9/google-config"))
    assert endpoints.gmail_api_base == "https://gmail.googleapis.com"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(404), "is not a usable discovery document: HTTP 404"),
        (httpx.Response(200, text="<html>"), "with a body that is not JSON"),
        (httpx.Response(200, json={**DOCUMENT, "issuer": "http://127.0.0.1:9/other"}),
         "it is for issuer http://127.0.0.1:9/other, not http://127.0.0.1:9/idp"),
        (httpx.Response(200, json={k: v for k, v in DOCUMENT.items() if k != "revocation_endpoint"}),
         "it has no usable revocation_endpoint; set TOKEN_BROKER_REVOKE_URI"),
        (httpx.Response(503), "no answer from http://127.0.0.1:9/idp/.well-known/openid-configuration"
         " (discovery: HTTP 503; tried 3 times)"),
    ],
)  # fmt: skip
async def test_an_unusable_document_names_the_variable_and_url(
    answer: httpx.Response, message: str
) -> None:
    with respx.mock() as mock:
        mock.get(f"{ISSUER}/.well-known/openid-configuration").mock(return_value=answer)
        with pytest.raises(DiscoveryFailed) as error:
            await discover(settings(issuer=ISSUER))
    assert str(error.value).startswith("TOKEN_BROKER_ISSUER: ")
    assert message in str(error.value)


async def test_a_transient_failure_at_start_is_retried() -> None:
    with respx.mock() as mock:
        route = mock.get(f"{ISSUER}/.well-known/openid-configuration")
        route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200, json=DOCUMENT)]
        endpoints = await discover(settings(issuer=ISSUER))
    assert endpoints.token_uri == f"{ISSUER}/token"


async def test_the_app_refuses_to_start_in_one_line(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(
        database_url=database_url,
        encryption_keys=SecretStr(TEST_KEYS),
        google_client_id=TEST_CLIENT_ID,
        google_client_secret=SecretStr(TEST_CLIENT_SECRET),
        redirect_uri=TEST_REDIRECT_URI,
        discovery_url="http://127.0.0.1:9/nothing-here",
    )
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigurationError):
        await start_broker(config)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot")]
    assert len(refusals) == 1
    assert refusals[0].startswith(
        "cannot start: TOKEN_BROKER_DISCOVERY_URL: no answer from http://127.0.0.1:9/nothing-here"
    )


def test_serve_says_why_it_cannot_start_without_a_traceback(cli_env, tmp_path: Path) -> None:
    env = {
        k: v for k, v in cli_env.items() if not k.endswith(("_URI", "_API_BASE")) or "REDIRECT" in k
    }
    result = cli("serve", "--port", "0", env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert (
        "cannot start: TOKEN_BROKER_ISSUER: no answer from "
        "http://127.0.0.1:9/.well-known/openid-configuration"
    ) in result.stderr


async def test_a_broker_configured_by_issuer_alone_connects_and_lists(
    provider: Provider, broker_factory, database_url: str
) -> None:
    broker: Broker = await broker_factory(
        settings(
            database_url=database_url,
            encryption_keys=SecretStr(TEST_KEYS),
            google_client_id=TEST_CLIENT_ID,
            google_client_secret=SecretStr(TEST_CLIENT_SECRET),
            redirect_uri=TEST_REDIRECT_URI,
            issuer=provider.url,
        )
    )
    headers = await broker.headers()
    started = await broker.client.post(
        "/v1/authorizations", json={"login_hint": "alice@example.com"}, headers=headers
    )
    assert started.json()["authorization_url"].startswith(f"{provider.url}/o/oauth2/v2/auth?")
    async with httpx.AsyncClient() as browser:
        answer = await consent(browser, started.json()["authorization_url"])
    register_secret(answer["code"])
    callback = await broker.client.get(
        "/v1/oauth/callback", params={"code": answer["code"], "state": answer["state"]}
    )
    assert callback.status_code == 200, callback.text
    token = await broker.client.get("/v1/accounts/alice@example.com/access-token", headers=headers)
    assert token.status_code == 200
    register_secret(token.json()["access_token"])
    listed = await broker.client.get("/v1/accounts/alice@example.com/messages", headers=headers)
    assert listed.status_code == 200
    assert listed.json()["count"] > 0
    calls = provider.state.calls
    assert calls["discovery"] == 1
    assert calls["gmail.messages.list"] >= 1
