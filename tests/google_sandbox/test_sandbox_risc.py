"""The sandbox's Cross-Account Protection and the refusals that end grants, pinned against
Google's documented shapes: the RISC configuration document, the stream API and its
service-account bearer, security event tokens as a receiver gets them, and the token
endpoint's answers for testing status, time-based access, idle grants, session and admin
policies and disabled accounts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.google_sandbox.test_sandbox import CLIENT_ID, Sandbox, sandbox
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.servers import Receiver, serve

__all__ = ["sandbox"]

AUDIENCE = "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"


async def service_account(sandbox: Sandbox) -> dict[str, Any]:
    created = await sandbox.http.post(f"{sandbox.url}/_sandbox/risc/service-accounts")
    assert created.status_code == 201
    key = created.json()
    register_secret(key["private_key"])
    return dict(key)


def bearer(key: dict[str, Any], **overrides: Any) -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": key["client_email"], "sub": key["client_email"], "aud": AUDIENCE,
              "iat": now, "exp": now + 3600, **overrides}  # fmt: skip
    token = jwt.encode(
        {"alg": "RS256", "kid": key["private_key_id"]},
        claims,
        RSAKey.import_key(key["private_key"]),
    )
    return {"Authorization": f"Bearer {token}"}


async def decoded(sandbox: Sandbox, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    document = (await sandbox.http.get(f"{sandbox.url}/.well-known/risc-configuration")).json()
    keys = KeySet.import_key_set((await sandbox.http.get(document["jwks_uri"])).json())
    result = jwt.decode(token, keys, algorithms=["RS256"])
    return dict(result.header), dict(result.claims)


async def registered(sandbox: Sandbox, receiver_url: str, *events: str) -> dict[str, Any]:
    key = await service_account(sandbox)
    requested = list(events) or [OAUTH + "tokens-revoked", RISC + "account-disabled",
                                 RISC + "account-enabled", RISC + "verification"]  # fmt: skip
    answer = await sandbox.http.post(
        f"{sandbox.url}/v1beta/stream:update",
        json={"delivery": {"delivery_method": RISC.replace("event-type/", "delivery-method/push"),
                           "url": receiver_url}, "events_requested": requested},
        headers=bearer(key),
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return key


async def test_configuration_document(sandbox: Sandbox) -> None:
    document = (await sandbox.http.get(f"{sandbox.url}/.well-known/risc-configuration")).json()
    # Google's RISC issuer ends in a slash, unlike its ID tokens' issuer.
    assert document["issuer"] == sandbox.url + "/"
    assert document["jwks_uri"] == sandbox.url + "/oauth2/v3/certs"
    assert document["delivery_methods_supported"] == [
        "https://schemas.openid.net/secevent/risc/delivery-method/push"
    ]


async def test_stream_api_authorization_and_errors(sandbox: Sandbox) -> None:
    key = await service_account(sandbox)
    url = f"{sandbox.url}/v1beta/stream"
    assert (await sandbox.http.get(url)).status_code == 401
    assert (
        await sandbox.http.get(url, headers=bearer(key, aud="https://other"))
    ).status_code == 401
    expired = bearer(key, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    assert (await sandbox.http.get(url, headers=expired)).status_code == 401
    stranger = dict(key, private_key_id="0" * 40)
    assert (await sandbox.http.get(url, headers=bearer(stranger))).status_code == 401
    missing = await sandbox.http.get(url, headers=bearer(key))
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Project has no RISC configuration."

    update = f"{sandbox.url}/v1beta/stream:update"
    no_delivery = await sandbox.http.post(update, json={}, headers=bearer(key))
    assert no_delivery.status_code == 400
    assert "must contain delivery" in no_delivery.json()["error"]["message"]
    plain = await sandbox.http.post(
        update,
        json={"delivery": {"delivery_method": "https://schemas.openid.net/secevent/risc/"
                           "delivery-method/push", "url": "http://broker.example/v1/risc"},
              "events_requested": []},
        headers=bearer(key),
    )  # fmt: skip
    assert plain.status_code == 403
    assert plain.json()["error"]["message"] == "The delivery endpoint must be an HTTPS URL."
    status = await sandbox.http.post(
        f"{sandbox.url}/v1beta/stream/status:update", json={"status": "on"}, headers=bearer(key)
    )
    assert status.status_code == 404  # no configuration yet


async def test_revoking_delivers_tokens_revoked_signed_for_the_client(sandbox: Sandbox) -> None:
    sandbox.state.issuer = sandbox.url
    receiver = Receiver()
    async with serve(receiver.app, lifespan="off") as hook:
        key = await registered(sandbox, f"{hook}/hook")
        stream = (
            await sandbox.http.get(f"{sandbox.url}/v1beta/stream", headers=bearer(key))
        ).json()
        assert stream["delivery"]["url"] == f"{hook}/hook"
        assert OAUTH + "tokens-revoked" in stream["events_delivered"]
        await sandbox.tokens()
        revoked = await sandbox.http.post(f"{sandbox.url}/_sandbox/users/alice@example.com/revoke")
        assert revoked.json() == {"revoked": 1}
        await eventually(lambda: receiver.received, within=5)
    headers, body = receiver.received[0]
    assert headers["content-type"] == "application/secevent+jwt"
    header, claims = await decoded(sandbox, body.decode())
    assert header["alg"] == "RS256"
    assert header["kid"]
    assert claims["iss"] == sandbox.url + "/"
    assert claims["aud"] == CLIENT_ID
    assert abs(claims["iat"] - time.time()) < 10
    assert claims["jti"]
    assert "exp" not in claims
    subject = claims["events"][OAUTH + "tokens-revoked"]["subject"]
    assert subject == {"subject_type": "iss-sub", "iss": sandbox.url + "/",
                       "sub": sandbox.state.users["alice@example.com"].sub}  # fmt: skip


async def test_disable_enable_and_verify(sandbox: Sandbox) -> None:
    sandbox.state.issuer = sandbox.url
    receiver = Receiver()
    async with serve(receiver.app, lifespan="off") as hook:
        key = await registered(sandbox, f"{hook}/hook")
        body = await sandbox.tokens()
        await sandbox.http.post(
            f"{sandbox.url}/_sandbox/users/alice@example.com/disable", json={"reason": "hijacking"}
        )
        refused = await sandbox.token(
            {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
        )
        assert refused.json()["error"] == "invalid_grant"
        assert (await sandbox.gmail(body["access_token"])).status_code == 401
        await sandbox.http.post(f"{sandbox.url}/_sandbox/users/alice@example.com/enable")
        verified = await sandbox.http.post(
            f"{sandbox.url}/v1beta/stream:verify", json={"state": "hello"}, headers=bearer(key)
        )
        assert verified.status_code == 200
        await eventually(lambda: len(receiver.received) == 3, within=5)
        again = await sandbox.token(
            {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
        )
        assert again.status_code == 200
        register_secret(again.json()["access_token"])
    events = {}
    for _, raw in receiver.received:
        _, claims = await decoded(sandbox, raw.decode())
        events.update(claims["events"])
    assert events[RISC + "account-disabled"]["reason"] == "hijacking"
    assert RISC + "account-enabled" in events
    assert events[RISC + "verification"]["state"] == "hello"


async def test_a_disabled_stream_and_unrequested_events_send_nothing(sandbox: Sandbox) -> None:
    sandbox.state.issuer = sandbox.url
    receiver = Receiver()
    async with serve(receiver.app, lifespan="off") as hook:
        key = await registered(sandbox, f"{hook}/hook", RISC + "verification")
        await sandbox.tokens()
        await sandbox.http.post(f"{sandbox.url}/_sandbox/users/alice@example.com/revoke")
        off = await sandbox.http.post(
            f"{sandbox.url}/v1beta/stream/status:update",
            json={"status": "disabled"},
            headers=bearer(key),
        )
        assert off.json() == {"status": "disabled"}
        status = await sandbox.http.get(f"{sandbox.url}/v1beta/stream/status", headers=bearer(key))
        assert status.json() == {"status": "disabled"}
        await sandbox.http.post(
            f"{sandbox.url}/v1beta/stream:verify", json={"state": "x"}, headers=bearer(key)
        )
        sent = await sandbox.http.post(
            f"{sandbox.url}/_sandbox/risc/events",
            json={"type": "verification", "state": "y"},
        )
        assert sent.json()["queued"] is False
    assert receiver.received == []


async def test_signed_only_events_and_token_identifiers(sandbox: Sandbox) -> None:
    body = await sandbox.tokens()
    answer = await sandbox.http.post(
        f"{sandbox.url}/_sandbox/risc/events",
        json={"type": "token-revoked", "email": "alice@example.com", "deliver": False,
              "issued_at": 1_700_000_000, "jti": "fixed-jti"},
    )  # fmt: skip
    assert answer.json()["queued"] is False
    _, claims = await decoded(sandbox, answer.json()["token"])
    assert (claims["iat"], claims["jti"]) == (1_700_000_000, "fixed-jti")
    subject = claims["events"][OAUTH + "token-revoked"]["subject"]
    inner = hashlib.sha512(body["refresh_token"].encode()).digest()
    assert subject == {
        "subject_type": "oauth_token",
        "token_type": "refresh_token",
        "token_identifier_alg": "hash_base64_sha512_sha512",
        "token": base64.b64encode(hashlib.sha512(inner).digest()).decode(),
    }


async def refresh(sandbox: Sandbox, body: dict[str, Any]) -> httpx.Response:
    response = await sandbox.token(
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    if response.status_code == 200:
        register_secret(response.json()["access_token"])
    return response


async def test_grants_of_an_app_in_testing_status_end_seven_days_after_consent(
    sandbox: Sandbox,
) -> None:
    await sandbox.http.put(
        f"{sandbox.url}/_sandbox/clients/{CLIENT_ID}", json={"publishing_status": "testing"}
    )
    body = await sandbox.tokens()
    sign_in_only = await sandbox.tokens("bob@example.com", scope="openid email profile")
    await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users/alice@example.com/age-grants", json={"seconds": 6 * 86400}
    )
    assert (await refresh(sandbox, body)).status_code == 200
    for email in ("alice@example.com", "bob@example.com"):
        await sandbox.http.post(
            f"{sandbox.url}/_sandbox/users/{email}/age-grants", json={"seconds": 86400 + 60}
        )
    expired = await refresh(sandbox, body)
    assert expired.status_code == 400
    assert expired.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    # Name, email and profile only: no 7-day end.
    assert (await refresh(sandbox, sign_in_only)).status_code == 200


async def test_time_based_access_says_how_long_and_ends(sandbox: Sandbox) -> None:
    await sandbox.http.put(
        f"{sandbox.url}/_sandbox/clients/{CLIENT_ID}", json={"time_based_access_seconds": 3600}
    )
    body = await sandbox.tokens()
    assert 3590 <= body["refresh_token_expires_in"] <= 3600
    refreshed = await refresh(sandbox, body)
    assert 0 < refreshed.json()["refresh_token_expires_in"] <= 3600
    await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users/alice@example.com/age-grants", json={"seconds": 3600}
    )
    assert (await refresh(sandbox, body)).json()["error"] == "invalid_grant"


async def test_idle_session_and_admin_refusals(sandbox: Sandbox) -> None:
    alice = await sandbox.tokens()
    await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users/alice@example.com/age-grants",
        json={"seconds": 183 * 86400},
    )
    assert (await refresh(sandbox, alice)).json()["error"] == "invalid_grant"  # six months idle

    bob = await sandbox.tokens("bob@example.com")
    await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users", json={"email": "bob@example.com", "reauth_required": True}
    )
    rapt = await refresh(sandbox, bob)
    assert rapt.status_code == 400
    assert rapt.json()["error"] == "invalid_grant"
    assert rapt.json()["error_subtype"] == "invalid_rapt"
    assert rapt.json()["error_description"] == "reauth related error (invalid_rapt)"
    await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users",
        json={"email": "bob@example.com", "reauth_required": False, "admin_restricted": True},
    )
    assert (await refresh(sandbox, bob)).json()["error"] == "admin_policy_enforced"
    await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users",
        json={"email": "bob@example.com", "admin_restricted": False},
    )
    assert (await refresh(sandbox, bob)).status_code == 200
    assert json.dumps(sandbox.state.snapshot())  # the new fields persist (dev mode)
