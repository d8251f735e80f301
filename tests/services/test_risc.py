"""The Cross-Account Protection receiver: tokens Google would send are acted on at once;
forged, replayed, stale or wrongly addressed ones are refused and change nothing.

The sandbox signs the tokens (its control API, without delivering them) and serves the
RISC configuration and keys; the broker receives them at POST /v1/risc. Both databases.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from sqlmodel import select

from tests.services.test_operations import samples, value
from tests.support.brokers import TEST_CLIENT_ID
from tests.support.flow import Live
from tests.support.grants import account, events, live_with_webhooks
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.provider import Provider
from token_broker.google.oauth import JWKS_REFETCH_INTERVAL_SECONDS
from token_broker.store.models import RiscEvent

ALICE = "alice@example.com"
SECEVENT = {"Content-Type": "application/secevent+jwt"}


async def connect(live: Live, email: str = ALICE) -> str:
    assert (await live.connect(email)).status_code == 200
    return str(live.provider.state.users[email].sub)


async def signed(live: Live, event: str, email: str | None = ALICE, **spec: Any) -> str:
    """A security event token the sandbox signs as Google would, not delivered."""
    answer = await live.browser.post(
        f"{live.provider.url}/_sandbox/risc/events",
        json={"type": event, "email": email, "deliver": False, **spec},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


async def post(live: Live, token: str | bytes) -> Any:
    body = token.encode() if isinstance(token, str) else token
    return await live.broker.client.post("/v1/risc", content=body, headers=SECEVENT)


async def cached_token(live: Live, subject: str) -> Any:
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/access-token", headers=await live.headers()
    )
    if response.status_code == 200:
        register_secret(response.json()["access_token"])
    return response


async def test_tokens_revoked_revokes_at_once_without_asking_the_token_endpoint(
    live: Live,
) -> None:
    subject = await connect(live)
    assert (await cached_token(live, subject)).status_code == 200  # cached now
    live.provider.state.revoke_user(ALICE)  # no receiver registered: nothing delivered
    live.provider.state.calls.clear()
    accepted = await post(live, await signed(live, "tokens-revoked"))
    assert accepted.status_code == 202
    assert accepted.content == b""
    refused = await cached_token(live, subject)
    assert refused.status_code == 409
    assert refused.json()["status_reason"] == "revoked_by_user"
    assert "Cross-Account Protection" in refused.json()["status_detail"]
    stored = await account(live.broker, subject)
    assert (stored.status, stored.status_reason) == ("revoked", "revoked_by_user")
    assert stored.refresh_token is None
    assert stored.access_token is None
    assert live.provider.state.calls["token"] == 0  # no refresh was attempted
    families = samples((await live.broker.client.get("/metrics")).text)
    assert value(families, "token_broker_risc_events_total", event="tokens_revoked",
                 outcome="applied") == 1  # fmt: skip


async def test_token_revoked_finds_the_stored_refresh_token_by_its_identifier(
    live: Live,
) -> None:
    subject = await connect(live)
    other = await connect(live, "bob@example.com")
    accepted = await post(live, await signed(live, "token-revoked"))
    assert accepted.status_code == 202
    assert (await account(live.broker, subject)).status == "revoked"
    assert (await account(live.broker, other)).status == "active"


async def test_disabled_suspends_and_enabled_lifts(
    provider: Provider, broker_factory: Any, settings_factory: Any
) -> None:
    async with live_with_webhooks(provider, broker_factory, settings_factory) as (
        live,
        receiver,
    ):
        subject = await connect(live)
        disabled = await signed(live, "account-disabled", reason="hijacking")
        assert (await post(live, disabled)).status_code == 202
        suspended = await cached_token(live, subject)
        assert suspended.status_code == 409
        assert suspended.json()["code"] == "account_suspended"
        assert suspended.json()["status_reason"] == "account_disabled_hijacking"
        listing = await live.broker.client.get(
            f"/v1/accounts/{subject}/messages", headers=await live.headers()
        )
        assert listing.json()["code"] == "account_suspended"
        stored = await account(live.broker, subject)
        assert stored.status == "suspended"
        assert stored.refresh_token is not None  # kept for the day Google enables it
        assert stored.access_token is None
        assert (await post(live, await signed(live, "account-enabled"))).status_code == 202
        assert (await account(live.broker, subject)).status == "active"
        assert (await cached_token(live, subject)).status_code == 200
        await eventually(lambda: events(receiver, "account.unsuspended"), within=10)
        suspension = events(receiver, "account.suspended")[0]
        assert suspension["reason"] == "account_disabled_hijacking"
        assert suspension["account"]["status"] == "suspended"


async def test_events_older_than_what_they_would_undo_change_nothing(live: Live) -> None:
    subject = await connect(live)
    now = int(time.time())
    # Enabled (later) arrives before disabled (earlier): the disable is superseded.
    assert (await post(live, await signed(live, "account-enabled", issued_at=now))).status_code == (
        202
    )
    late = await signed(live, "account-disabled", issued_at=now - 30)
    assert (await post(live, late)).status_code == 202
    assert (await account(live.broker, subject)).status == "active"
    # Tokens revoked before the latest consent were the old grant's.
    old = await signed(live, "tokens-revoked", issued_at=now - 60)
    assert (await post(live, old)).status_code == 202
    assert (await account(live.broker, subject)).status == "active"
    async with live.broker.state.database.transaction() as session:
        outcomes = {row.outcome for row in (await session.exec(select(RiscEvent))).all()}
    assert "superseded" in outcomes


async def test_security_events_that_change_no_status_are_recorded_and_sent_on(
    provider: Provider, broker_factory: Any, settings_factory: Any
) -> None:
    async with live_with_webhooks(provider, broker_factory, settings_factory) as (
        live,
        receiver,
    ):
        subject = await connect(live)
        for event in ("account-credential-change-required", "sessions-revoked"):
            assert (await post(live, await signed(live, event))).status_code == 202
        assert (await account(live.broker, subject)).status == "active"
        await eventually(
            lambda: (
                events(receiver, "account.credential_change_required")
                and events(receiver, "account.sessions_revoked")
            ),
            within=10,
        )
        # A later refused refresh is read in that light: the password changed.
        live.provider.state.revoke_user(ALICE)
        refused = await live.broker.client.get(
            f"/v1/accounts/{subject}/access-token",
            params={"force_refresh": "true"},
            headers=await live.headers(),
        )
        assert refused.json()["status_reason"] == "password_changed"


async def test_verification_and_unknown_subjects_are_acknowledged(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="token_broker.risc")
    verification = await signed(live, "verification", email=None, state="hello-broker")
    assert (await post(live, verification)).status_code == 202
    assert "hello-broker" in caplog.text
    live.provider.state.add_user("stranger@example.com")
    stranger = await signed(live, "tokens-revoked", email="stranger@example.com",
                            client_id=TEST_CLIENT_ID)  # fmt: skip
    assert (await post(live, stranger)).status_code == 202


def forged(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    return jwt.encode(header, claims, key)


async def test_forged_replayed_stale_and_misaddressed_tokens_are_refused(live: Live) -> None:
    subject = await connect(live)
    assert (await cached_token(live, subject)).status_code == 200
    now = int(time.time())
    genuine = await signed(live, "tokens-revoked")
    kid = live.provider.state.signing_keys.current.kid
    header, payload, _ = genuine.split(".")
    claims = jwt.decode(genuine, live.provider.state.signing_keys.current.jwk).claims
    stranger_key = RSAKey.generate_key(2048)
    cases = {
        "a stranger's key under Google's kid": (
            forged({"alg": "RS256", "kid": kid}, claims, stranger_key), "authentication_failed"),
        "an unknown kid": (
            forged({"alg": "RS256", "kid": "not-a-google-key"}, claims, stranger_key),
            "invalid_key"),
        "HS256 keyed with the public key's id": (
            forged({"alg": "HS256", "kid": kid}, claims, OctKey.generate_key(256)),
            "invalid_key"),
        "alg none": (f"{_b64({'alg': 'none', 'kid': kid})}.{payload}.", "invalid_request"),
        "a payload swapped under a genuine signature": (
            f"{header}.{_b64(dict(claims, aud='x'))}.{genuine.split('.')[2]}",
            "authentication_failed"),
        "another issuer": (
            await signed(live, "tokens-revoked", issuer="https://accounts.example.org/"),
            "invalid_issuer"),
        "another client": (
            await signed(live, "tokens-revoked", client_id="other.apps.googleusercontent.com"),
            "invalid_audience"),
        "stale": (await signed(live, "tokens-revoked", issued_at=now - 7200), "invalid_request"),
        "from the future": (
            await signed(live, "tokens-revoked", issued_at=now + 3600), "invalid_request"),
        "from beyond any calendar": (
            await signed(live, "tokens-revoked", issued_at=10**18), "invalid_request"),
        "not a JWT": ("hello", "invalid_request"),
        "empty": ("", "invalid_request"),
    }  # fmt: skip
    for name, (token, err) in cases.items():
        refused = await post(live, token)
        assert refused.status_code == 400, name
        assert refused.headers["content-type"] == "application/problem+json", name
        assert refused.json()["code"] == "invalid_security_event", name
        assert refused.json()["err"] == err, name
    assert (await post(live, b"\xff\xfe")).json()["err"] == "invalid_request"

    # Nothing changed: the account is active and its cached token still served.
    assert (await account(live.broker, subject)).status == "active"
    assert (await cached_token(live, subject)).status_code == 200

    # A genuine token is accepted once; its replay is refused.
    assert (await post(live, genuine)).status_code == 202
    replayed = await post(live, genuine)
    assert replayed.status_code == 400
    assert "received before" in replayed.json()["description"]
    families = samples((await live.broker.client.get("/metrics")).text)
    assert value(families, "token_broker_risc_refused_total", err="invalid_audience") == 1


async def test_rotated_signing_keys_are_fetched_at_most_once_per_interval(live: Live) -> None:
    subject = await connect(live)
    assert (await post(live, await signed(live, "sessions-revoked"))).status_code == 202
    live.provider.state.signing_keys.rotate()
    live.provider.state.calls.clear()
    verifier = live.broker.state.risc.verifier
    verifier._keys_at -= JWKS_REFETCH_INTERVAL_SECONDS + 1  # the keys were fetched a while ago
    assert (await post(live, await signed(live, "sessions-revoked"))).status_code == 202
    assert live.provider.state.calls["jwks"] == 1  # the new kid: one refetch
    for _ in range(3):  # forged kids cannot make every request fetch
        forged_token = forged({"alg": "RS256", "kid": "x" * 40}, {"iss": "x"},
                              RSAKey.generate_key(2048))  # fmt: skip
        assert (await post(live, forged_token)).json()["err"] == "invalid_key"
    assert live.provider.state.calls["jwks"] == 1
    assert (await account(live.broker, subject)).status == "active"


async def test_no_configuration_is_503_so_google_sends_it_again(
    provider: Provider, broker_factory: Any, settings_factory: Any
) -> None:
    broker = await broker_factory(
        settings_factory(**provider.settings(), risc_configuration_url="http://127.0.0.1:9/risc")
    )
    async with httpx.AsyncClient() as browser:
        live = Live(provider, broker, browser)
        token = await signed(live, "verification", email=None)
        answer = await post(live, token)
    assert answer.status_code == 503
    assert answer.json()["code"] == "upstream_unavailable"


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def test_one_token_delivered_to_several_replicas_at_once_acts_once(
    live: Live, broker_factory: Any
) -> None:
    subject = await connect(live)
    other = await broker_factory(live.broker.state.settings)
    token = await signed(live, "account-disabled", reason="bulk-account")

    async def deliver(client: httpx.AsyncClient) -> int:
        answer = await client.post("/v1/risc", content=token.encode(), headers=SECEVENT)
        return answer.status_code

    clients = [live.broker.client, other.client] * 3
    statuses = await asyncio.gather(*(deliver(client) for client in clients))
    assert sorted(statuses) == [202, 400, 400, 400, 400, 400]
    assert (await account(live.broker, subject)).status_reason == "account_disabled_bulk_account"
    async with live.broker.state.database.transaction() as session:
        assert len((await session.exec(select(RiscEvent))).all()) == 1
