"""The sandbox's identity answers that the broker's trust checks are tested against:
per-user email claims and verification, another account than `login_hint` at
consent, `iss` on the authorization response (RFC 9207), the nonce, several audiences.
"""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet

from google_sandbox.browser import consent
from tests.google_sandbox.test_sandbox import CLIENT_ID, Sandbox, sandbox
from tests.support.hygiene import register_secret

__all__ = ["sandbox"]  # the fixture, shared with test_sandbox.py


async def claims_of(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    keys = KeySet.import_key_set((await sandbox.http.get(f"{sandbox.url}/oauth2/v3/certs")).json())
    return dict(jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims)


async def userinfo(sandbox: Sandbox, body: dict[str, Any], path: str) -> dict[str, Any]:
    response = await sandbox.http.get(
        f"{sandbox.url}{path}", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    return dict(response.json())


async def test_a_user_can_claim_any_address_unverified(sandbox: Sandbox) -> None:
    created = await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users",
        json={"email": "mallory@evil.example", "email_claim": "A@EXAMPLE.ORG",
              "email_verified": False},
    )  # fmt: skip
    assert created.status_code == 201
    assert created.json()["email_claim"] == "A@EXAMPLE.ORG"
    body = await sandbox.tokens("mallory@evil.example")
    claims = await claims_of(sandbox, body)
    assert (claims["email"], claims["email_verified"]) == ("A@EXAMPLE.ORG", False)
    oidc = await userinfo(sandbox, body, "/v1/userinfo")
    assert (oidc["email"], oidc["email_verified"]) == ("A@EXAMPLE.ORG", False)
    v2 = await userinfo(sandbox, body, "/oauth2/v2/userinfo")
    assert (v2["email"], v2["verified_email"]) == ("A@EXAMPLE.ORG", False)
    # Its subject is its own: an address is not an identity.
    assert claims["sub"] == sandbox.state.users["mallory@evil.example"].sub
    assert claims["sub"] != sandbox.state.add_user("a@example.org").sub


async def test_consent_may_pick_another_account_than_the_hint(sandbox: Sandbox) -> None:
    sandbox.state.add_user("alice@example.com")
    sandbox.state.add_user("bob@example.com")
    url = sandbox.authorize_url(login_hint="alice@example.com")
    page = await sandbox.http.get(url)
    assert 'value="alice@example.com" checked' in page.text
    assert 'value="bob@example.com">' in page.text  # offered, not preselected
    answer = await consent(sandbox.http, url, email="bob@example.com")
    register_secret(answer["code"])
    assert sandbox.state.codes[answer["code"]].email == "bob@example.com"


async def test_the_authorization_response_names_its_issuer(sandbox: Sandbox) -> None:
    allowed = await consent(sandbox.http, sandbox.authorize_url())
    register_secret(allowed["code"])
    assert allowed["iss"] == sandbox.url
    denied = await consent(sandbox.http, sandbox.authorize_url(), decision="deny")
    assert denied["iss"] == sandbox.url
    document = (await sandbox.http.get(f"{sandbox.url}/.well-known/openid-configuration")).json()
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["issuer"] == allowed["iss"]


async def test_the_code_exchange_id_token_carries_the_nonce(sandbox: Sandbox) -> None:
    body = await sandbox.tokens(nonce="n-0S6_WzA2Mj")
    assert (await claims_of(sandbox, body))["nonce"] == "n-0S6_WzA2Mj"
    refreshed = await sandbox.token(
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    register_secret(refreshed.json()["access_token"])
    assert "nonce" not in await claims_of(sandbox, refreshed.json())
    without = await sandbox.tokens()
    assert "nonce" not in await claims_of(sandbox, without)


async def test_several_audiences_with_azp_per_client(sandbox: Sandbox) -> None:
    changed = await sandbox.http.put(
        f"{sandbox.url}/_sandbox/clients/{CLIENT_ID}",
        json={"extra_audiences": ["android.apps.googleusercontent.com"]},
    )
    assert changed.json() | {"publishing_status": None, "time_based_access_seconds": None} == {
        "extra_audiences": ["android.apps.googleusercontent.com"],
        "azp": CLIENT_ID,
        "publishing_status": None,
        "time_based_access_seconds": None,
    }
    claims = await claims_of(sandbox, await sandbox.tokens())
    assert claims["aud"] == [CLIENT_ID, "android.apps.googleusercontent.com"]
    assert claims["azp"] == CLIENT_ID
    await sandbox.http.put(
        f"{sandbox.url}/_sandbox/clients/{CLIENT_ID}", json={"azp": "someone-else"}
    )
    assert (await claims_of(sandbox, await sandbox.tokens()))["azp"] == "someone-else"
    missing = await sandbox.http.put(f"{sandbox.url}/_sandbox/clients/nobody", json={})
    assert missing.status_code == 404
