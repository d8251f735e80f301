"""The exact requests the broker sends upstream, and how it reads every answer (respx)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.brokers import (
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    TEST_REDIRECT_URI,
    UPSTREAM,
    Broker,
)
from tests.support.google_fakes import SUBJECT, form, id_token, token_body
from token_broker.services.api_keys import Permission
from token_broker.settings import Settings

GMAIL = "https://www.googleapis.com/auth/gmail.readonly"


async def start(broker: Broker) -> dict[str, str]:
    """Start an authorization; the parameters of the URL it sends the user to."""
    response = await broker.client.post(
        "/v1/authorizations", json={}, headers=await broker.headers(Permission.ACCOUNTS_WRITE)
    )
    url = response.json()["authorization_url"]
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def callback(
    broker: Broker,
    upstream: respx.MockRouter,
    *,
    id_token_for: Callable[[str], str | None] | None = None,
    **claims: Any,
) -> tuple[httpx.Response, respx.Route]:
    """A callback whose code Google exchanges for an ID token carrying the flow's nonce."""
    params = await start(broker)
    nonce = params["nonce"]
    token = id_token_for(nonce) if id_token_for else id_token(nonce=nonce, **claims)
    route = upstream.post("/token").respond(json=token_body(id_token=token))
    response = await broker.client.get(
        "/v1/oauth/callback",
        params={"code": "4/0Acode-from-google", "state": params["state"], "scope": GMAIL,
                "iss": "https://accounts.google.com"},
    )  # fmt: skip
    return response, route


async def test_code_exchange_request_is_exact(broker: Broker, upstream: respx.MockRouter) -> None:
    params = await start(broker)
    token = upstream.post("/token").respond(
        json=token_body(id_token=id_token(nonce=params["nonce"]))
    )
    async with broker.state.database.transaction() as session:
        from sqlmodel import select

        from token_broker.store.models import OAuthState

        stored = (await session.exec(select(OAuthState))).one()
    verifier = broker.state.keyring.open(
        stored.code_verifier, column=OAuthState.CODE_VERIFIER, row=stored.state_hash
    ).get_secret_value()

    response = await broker.client.get(
        "/v1/oauth/callback", params={"code": "4/0Acode-from-google", "state": params["state"]}
    )
    assert response.status_code == 200, response.text
    request = token.calls.last.request
    assert request.method == "POST"
    assert request.url == f"{UPSTREAM}/token"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert "authorization" not in request.headers
    assert form(request) == {
        "grant_type": "authorization_code",
        "code": "4/0Acode-from-google",
        "redirect_uri": TEST_REDIRECT_URI,
        "code_verifier": verifier,
        "client_id": TEST_CLIENT_ID,
        "client_secret": TEST_CLIENT_SECRET,
    }


async def test_client_secret_basic(
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    upstream: respx.MockRouter,
) -> None:
    broker = await broker_factory(
        settings_factory(token_endpoint_auth_method="client_secret_basic")
    )
    response, token = await callback(broker, upstream)
    assert response.status_code == 200
    request = token.calls.last.request
    expected = base64.b64encode(f"{TEST_CLIENT_ID}:{TEST_CLIENT_SECRET}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert "client_secret" not in form(request)
    assert "client_id" not in form(request)


async def test_exchange_endpoint_sends_postmessage_and_verifier(
    broker: Broker, upstream: respx.MockRouter
) -> None:
    token = upstream.post("/token").respond(json=token_body())
    verifier = "x" * 43
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Apopup", "code_verifier": verifier},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == 200, response.text
    sent = form(token.calls.last.request)
    assert sent["redirect_uri"] == "postmessage"
    assert sent["code_verifier"] == verifier
    account = response.json()
    assert account["subject"] == SUBJECT
    assert account["email"] == "alice@example.com"
    assert "ya29" not in response.text
    assert "1//" not in response.text


async def test_userinfo_is_used_without_an_id_token(
    broker: Broker, upstream: respx.MockRouter
) -> None:
    userinfo = upstream.get("/v1/userinfo").respond(
        json={"id": SUBJECT, "email": "alice@example.com", "verified_email": True}
    )
    response, _ = await callback(broker, upstream, id_token_for=lambda nonce: None)
    assert response.status_code == 200
    assert userinfo.calls.last.request.headers["authorization"] == (
        "Bearer ya29.upstream-access-token"
    )
    accounts = await broker.client.get(
        f"/v1/accounts/{SUBJECT}", headers=await broker.headers(Permission.ACCOUNTS_READ)
    )
    assert accounts.json()["email"] == "alice@example.com"


async def test_no_subject_is_no_user_id(broker: Broker, upstream: respx.MockRouter) -> None:
    upstream.post("/token").respond(json=token_body(id_token=None))
    upstream.get("/v1/userinfo").respond(json={"email": "alice@example.com"})
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Ax"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == 502
    assert response.json()["code"] == "no_user_id"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example"}, "iss"),
        ({"aud": "someone-else"}, "aud"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"sub": None}, "sub"),
    ],
)
async def test_invalid_id_tokens_are_refused(
    broker: Broker, upstream: respx.MockRouter, claims: dict[str, Any], reason: str
) -> None:
    upstream.post("/token").respond(json=token_body(id_token=id_token(**claims)))
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Ax"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_error"
    assert "ID token" in response.json()["detail"]


async def test_id_token_signed_by_another_key_is_refused(
    broker: Broker, upstream: respx.MockRouter
) -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "google-1"})
    now = int(time.time())

    def forged(nonce: str) -> str:
        return jwt.encode(
            {"alg": "RS256", "kid": "google-1"},
            {"iss": "https://accounts.google.com", "aud": TEST_CLIENT_ID, "sub": "1",
             "iat": now, "exp": now + 60, "nonce": nonce},
            other,
        )  # fmt: skip

    response, _ = await callback(broker, upstream, id_token_for=forged)
    assert response.status_code == 502
    assert "upstream_error" in response.text


async def test_legacy_issuer_is_accepted(broker: Broker, upstream: respx.MockRouter) -> None:
    response, _ = await callback(broker, upstream, iss="accounts.google.com")
    assert response.status_code == 200


async def test_rotated_jwks_is_refetched(broker: Broker, upstream: respx.MockRouter) -> None:
    response, _ = await callback(broker, upstream)
    assert response.status_code == 200
    rotated = RSAKey.generate_key(2048, parameters={"kid": "google-2"})
    now = int(time.time())

    def signed_with_rotated_key(nonce: str) -> str:
        return jwt.encode(
            {"alg": "RS256", "kid": "google-2"},
            {"iss": "https://accounts.google.com", "aud": TEST_CLIENT_ID, "sub": SUBJECT,
             "iat": now, "exp": now + 60, "nonce": nonce},
            rotated,
        )  # fmt: skip

    jwks = upstream.get("/oauth2/v3/certs").respond(json={"keys": [rotated.as_dict(private=False)]})
    broker.state.connect.oauth._jwks_fetched_at -= 60  # past the forged-kid guard
    response, _ = await callback(broker, upstream, id_token_for=signed_with_rotated_key)
    assert response.status_code == 200
    assert jwks.call_count == 2  # the first fetch, and one refetch for the new kid


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (httpx.Response(400, json={"error": "invalid_grant", "error_description": "Bad Request"}), 400, "code_exchange_failed"),
        (httpx.Response(401, json={"error": "invalid_client", "error_description": "Unauthorized"}), 502, "provider_rejected_client"),
        (httpx.Response(500, json={"error": "internal_failure"}), 503, "upstream_unavailable"),
        (httpx.Response(503, text="<html>unavailable</html>", headers={"Retry-After": "7"}), 503, "upstream_unavailable"),
        (httpx.Response(200, text="<html>not json</html>"), 502, "upstream_error"),
        (httpx.Response(200, json={"token_type": "Bearer"}), 502, "upstream_error"),
        (httpx.Response(400, text=""), 502, "upstream_error"),
        (httpx.TimeoutException("slow"), 503, "upstream_unavailable"),
        (httpx.ConnectError("refused"), 503, "upstream_unavailable"),
    ],
)  # fmt: skip
async def test_exchange_failures_map_to_documented_problems(
    broker: Broker, upstream: respx.MockRouter, answer: Any, status: int, code: str
) -> None:
    route = upstream.post("/token")
    if isinstance(answer, Exception):
        route.side_effect = answer
    else:
        route.return_value = answer
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Asecret-code"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert "4/0Asecret-code" not in response.text
    assert TEST_CLIENT_SECRET not in response.text
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    if code == "code_exchange_failed":
        # A broker link, bound to nothing but the caller (there is no account yet).
        assert body["authorization_url"].startswith(
            "https://broker.example/v1/oauth/reauthorize?link="
        )
    assert route.call_count == 1  # a code is single use: never retried


async def test_absurd_expires_in_is_bounded(broker: Broker, upstream: respx.MockRouter) -> None:
    upstream.post("/token").respond(json=token_body(expires_in=10**12))
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Ax"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == 200
    from datetime import datetime, timedelta

    expires = datetime.fromisoformat(response.json()["access_token_expires_at"])
    assert expires - datetime.now(expires.tzinfo) <= timedelta(days=1)


@pytest.mark.parametrize(
    ("nonce_claim", "accepted"),
    [("sent", True), (None, False), ("another-flow's-nonce", False)],
    ids=["matching", "missing", "other"],
)
async def test_the_id_token_must_carry_the_flows_nonce(
    broker: Broker, upstream: respx.MockRouter, nonce_claim: str | None, accepted: bool
) -> None:
    def token_for(nonce: str) -> str:
        return id_token(nonce=nonce if nonce_claim == "sent" else nonce_claim)

    response, _ = await callback(broker, upstream, id_token_for=token_for)
    if accepted:
        assert response.status_code == 200
        return
    assert response.status_code == 502
    assert "invalid_claim: nonce" in response.text
    accounts = await broker.client.get(
        "/v1/accounts", headers=await broker.headers(Permission.ACCOUNTS_READ)
    )
    assert accounts.json()["items"] == []


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"aud": [TEST_CLIENT_ID, "android.apps.googleusercontent.com"]}, True),
        ({"aud": [TEST_CLIENT_ID, "other"], "azp": "other"}, False),
        ({"aud": [TEST_CLIENT_ID, "other"], "azp": None}, False),
        # One audience: azp may name another client of the project (Google's hybrid apps).
        ({"aud": TEST_CLIENT_ID, "azp": "android.apps.googleusercontent.com"}, True),
    ],
    ids=["several-azp-us", "several-azp-other", "several-no-azp", "one-azp-other"],
)
async def test_several_audiences_need_azp_to_be_this_client(
    broker: Broker, upstream: respx.MockRouter, claims: dict[str, Any], accepted: bool
) -> None:
    response, _ = await callback(broker, upstream, **claims)
    assert (response.status_code == 200) is accepted, response.text
    if not accepted:
        assert "invalid_claim: azp" in response.text


async def test_callback_with_another_issuer_exchanges_nothing(
    broker: Broker, upstream: respx.MockRouter
) -> None:
    params = await start(broker)
    route = upstream.post("/token").respond(json=token_body())
    response = await broker.client.get(
        "/v1/oauth/callback",
        params={"code": "4/0Acode", "state": params["state"], "iss": "https://evil.example"},
    )
    assert response.status_code == 400
    assert "issuer_mismatch" in response.text
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("identity", "verified"),
    [
        ({"email_verified": True}, True),
        ({"email_verified": "true"}, True),  # very old Google tokens
        ({"email_verified": False}, False),
        ({"email_verified": "false"}, False),
        ({"email_verified": None}, False),  # not said: not verified
    ],
)
async def test_email_verified_is_read_strictly(
    broker: Broker, upstream: respx.MockRouter, identity: dict[str, Any], verified: bool
) -> None:
    upstream.post("/token").respond(
        json=token_body(id_token=id_token(email=" Alice@EXAMPLE.com ", **identity))
    )
    exchanged = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Ax"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["email"] == "alice@example.com"
    assert exchanged.json()["email_verified"] is verified
    by_email = await broker.client.get(
        "/v1/accounts/alice@example.com", headers=await broker.headers(Permission.ACCOUNTS_READ)
    )
    assert by_email.status_code == (200 if verified else 404)


@pytest.mark.parametrize("field", ["email_verified", "verified_email"])
async def test_userinfo_verification_is_read_in_both_shapes(
    broker: Broker, upstream: respx.MockRouter, field: str
) -> None:
    upstream.post("/token").respond(json=token_body(id_token=None))
    upstream.get("/v1/userinfo").respond(
        json={"sub": SUBJECT, "email": "alice@example.com", field: False}
    )
    exchanged = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Ax"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert exchanged.json()["email_verified"] is False
