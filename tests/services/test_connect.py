"""The connect flow end to end: broker and sandbox provider, consent by form post."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.support.flow import Live
from tests.support.hygiene import register_secret
from token_broker.google.oauth import JWKS_REFETCH_INTERVAL_SECONDS
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.authorizations import hash_state
from token_broker.services.return_to import return_to_allowed
from token_broker.store.models import Account, AuditEvent, OAuthState

GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
RETURN_TO = "https://app.example/connected"


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_authorization_url_carries_every_parameter(live: Live) -> None:
    started = await live.start(login_hint="alice@example.com", return_to=RETURN_TO)
    url = started["authorization_url"]
    assert url.startswith(f"{live.provider.url}/o/oauth2/v2/auth?")
    params = query(url)
    assert params == {
        "response_type": "code",
        "client_id": "test-client.apps.googleusercontent.com",
        "redirect_uri": "https://broker.example/v1/oauth/callback",
        "scope": f"openid email profile {GMAIL}",
        "state": started["state"],
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "login_hint": "alice@example.com",
        "code_challenge": params["code_challenge"],
        "code_challenge_method": "S256",
        "nonce": params["nonce"],
    }
    assert len(params["code_challenge"]) == 43
    assert len(params["nonce"]) >= 32
    assert "approval_prompt" not in params
    # The state is stored hashed, with its PKCE verifier sealed.
    async with live.broker.state.database.transaction() as session:
        rows = (await session.exec(sa.select(OAuthState))).scalars().all()  # type: ignore[call-overload]
    (row,) = rows
    assert row.state_hash == hash_state(started["state"])
    assert started["state"] not in row.state_hash
    assert row.code_verifier.startswith("tb1.test1.")
    assert row.return_to == RETURN_TO
    assert row.authorization_id == started["id"]
    assert row.nonce_hash == hash_state(params["nonce"])  # the nonce is stored hashed too


async def test_connect_stores_an_encrypted_refresh_token(live: Live) -> None:
    started = await live.start(login_hint="alice@example.com", return_to=RETURN_TO)
    answer = await live.consent(started["authorization_url"], email="alice@example.com")
    response = await live.callback(answer)
    assert response.status_code == 303
    assert response.headers["referrer-policy"] == "no-referrer"
    user = live.provider.state.users["alice@example.com"]
    # Only the authorization id and a status: the app confirms the result over the API.
    assert response.headers["location"] == (
        f"{RETURN_TO}?authorization={started['id']}&status=connected"
    )
    assert user.sub not in response.headers["location"]

    account = await live.stored(user.sub)
    assert account.status == "active"
    assert account.email == "alice@example.com"
    # Google's spelling: email and profile by their userinfo URLs.
    assert set(account.scopes.split()) == {
        "openid",
        "https://www.googleapis.com/auth/userinfo.email",
        "https://www.googleapis.com/auth/userinfo.profile",
        GMAIL,
    }
    (grant,) = live.provider.state.grants.values()
    (refresh_token,) = grant.refresh_tokens
    assert account.refresh_token is not None
    assert refresh_token not in account.refresh_token
    assert account.refresh_token.startswith("tb1.test1.")
    opened = live.broker.state.keyring.open(
        account.refresh_token, column=Account.REFRESH_TOKEN, row=account.id
    )
    assert opened.get_secret_value() == refresh_token
    assert account.access_token_expires_at > utcnow() + timedelta(minutes=55)

    listed = await live.broker.client.get(f"/v1/accounts/{user.sub}", headers=await live.headers())
    assert listed.json()["status"] == "active"
    assert refresh_token not in listed.text
    by_email = await live.broker.client.get(
        "/v1/accounts/alice@example.com", headers=await live.headers()
    )
    assert by_email.json()["subject"] == user.sub


async def test_callback_without_return_to_renders_a_page(live: Live) -> None:
    response = await live.connect("bob@example.com")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "bob@example.com" in response.text
    assert response.headers["cache-control"] == "no-store"


async def test_replayed_forged_and_expired_states_are_refused(live: Live) -> None:
    started = await live.start(return_to=RETURN_TO)
    answer = await live.consent(started["authorization_url"])
    assert (await live.callback(answer)).status_code == 303
    replay = await live.callback(answer)
    assert replay.status_code == 400
    assert "invalid_state" in replay.text

    forged = await live.callback({**answer, "state": "forged-state"})
    assert forged.status_code == 400
    assert "invalid_state" in forged.text

    expiring = await live.start()
    answer = await live.consent(expiring["authorization_url"])
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(OAuthState).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expired = await live.callback(answer)
    assert expired.status_code == 400
    assert "invalid_state" in expired.text


async def test_denied_consent_reaches_return_to_as_an_error(live: Live) -> None:
    started = await live.start(return_to=RETURN_TO)
    answer = await live.consent(started["authorization_url"], decision="deny")
    response = await live.callback(answer)
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"{RETURN_TO}?authorization={started['id']}&status=failed&error=access_denied"
    )


def code_client_url(live: Live, **extra: str) -> str:
    """What Google's browser-side code client opens: redirect URI `postmessage`, no PKCE."""
    params = {
        "client_id": "test-client.apps.googleusercontent.com",
        "redirect_uri": "postmessage",
        "response_type": "code",
        "scope": f"openid email {GMAIL}",
        **extra,
    }
    return f"{live.provider.url}/o/oauth2/v2/auth?{urlencode(params)}"


async def postmessage_code(live: Live, url: str) -> str:
    await live.browser.get(url)
    page = await live.browser.post(
        url.split("?", maxsplit=1)[0],
        data={**query(url), "email": "alice@example.com", "decision": "allow"},
    )
    assert page.status_code == 200, page.text
    return register_secret(page.text.split('data-code="')[1].split('"')[0])


async def test_second_consent_without_refresh_token_keeps_the_first(live: Live) -> None:
    assert (await live.connect()).status_code == 200
    user = live.provider.state.users["alice@example.com"]
    first = await live.stored(user.sub)
    code = await postmessage_code(live, code_client_url(live, access_type="offline"))
    response = await live.broker.client.post(
        "/v1/oauth/exchange", json={"code": code}, headers=await live.headers()
    )
    assert response.status_code == 200, response.text
    second = await live.stored(user.sub)
    assert second.refresh_token == first.refresh_token
    assert second.access_token != first.access_token
    assert second.id == first.id


async def test_exchange_without_any_refresh_token_is_409_with_url(live: Live) -> None:
    code = await postmessage_code(live, code_client_url(live))  # online access: no refresh token
    response = await live.broker.client.post(
        "/v1/oauth/exchange", json={"code": code}, headers=await live.headers()
    )
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "no_refresh_token"
    opened = await live.open_link(body["authorization_url"])
    assert opened.status_code == 303
    assert query(opened.headers["location"])["prompt"] == "consent"
    assert await account_count(live) == 0


async def account_count(live: Live) -> int:
    async with live.broker.state.database.transaction() as session:
        return (await session.exec(select(sa.func.count()).select_from(Account))).one()


async def test_unticked_gmail_scope_stores_nothing(live: Live) -> None:
    started = await live.start(return_to=RETURN_TO)
    answer = await live.consent(
        started["authorization_url"], granted_scopes=["openid", "email", "profile"]
    )
    response = await live.callback(answer)
    assert response.headers["location"] == (
        f"{RETURN_TO}?authorization={started['id']}&status=failed&error=scope_not_granted"
    )
    assert await account_count(live) == 0


async def test_revoked_account_reconnects_as_active(live: Live) -> None:
    assert (await live.connect()).status_code == 200
    user = live.provider.state.users["alice@example.com"]
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(Account).values(status="revoked", refresh_token=None)
        )
    assert (await live.connect()).status_code == 200
    account = await live.stored(user.sub)
    assert account.status == "active"
    assert account.refresh_token is not None


async def test_bad_code_gives_code_exchange_failed_with_fresh_url(live: Live) -> None:
    response = await live.broker.client.post(
        "/v1/oauth/exchange", json={"code": "4/0Anot-a-real-code"}, headers=await live.headers()
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "code_exchange_failed"
    assert body["authorization_url"].startswith("https://broker.example/v1/oauth/reauthorize?link=")
    assert "4/0Anot-a-real-code" not in response.text


async def test_return_to_and_scopes_must_be_allowed(live: Live) -> None:
    headers = await live.headers()
    for return_to in (
        "https://evil.example/connected",
        "https://app.example/connected-evil",
        "https://app.example@evil.example/connected",
        "//evil.example/connected",
        "javascript:alert(1)",
        "http://app.example/connected",
        "https://app.example:8443/connected",
    ):
        response = await live.broker.client.post(
            "/v1/authorizations", json={"return_to": return_to}, headers=headers
        )
        assert response.status_code == 400, return_to
        assert response.json()["code"] == "return_to_not_allowed"
    response = await live.broker.client.post(
        "/v1/authorizations",
        json={"scopes": ["https://www.googleapis.com/auth/drive"]},
        headers=headers,
    )
    assert response.json()["code"] == "scope_not_allowed"
    narrow = await live.start(scopes=["openid"])
    assert query(narrow["authorization_url"])["scope"] == f"openid {GMAIL}"


@pytest.mark.parametrize(
    ("candidate", "allowed"),
    [
        ("https://app.example/connected", True),
        ("https://app.example/connected?tab=mail", True),
        ("https://app.example/connected/deeper", True),
        ("https://APP.example/connected", True),
        ("https://app.example/connectedx", False),
        ("https://app.example/", False),
        ("https://app.example/connected#frag", False),
        ("https://app.example\\@evil.example/connected", False),
        ("https://app.example/connected\n", False),
    ],
)
def test_return_to_matching(candidate: str, allowed: bool) -> None:
    assert return_to_allowed(candidate, ("https://app.example/connected",)) is allowed


async def test_audit_records_start_and_connect(live: Live) -> None:
    assert (await live.connect()).status_code == 200
    async with live.broker.state.database.transaction() as session:
        events = (
            (await session.execute(sa.select(AuditEvent).order_by(AuditEvent.id))).scalars().all()
        )  # type: ignore[call-overload]
    actions = [(e.action, e.outcome) for e in events]
    assert ("authorization_started", "ok") in actions
    assert ("account_connected", "ok") in actions
    connected = next(e for e in events if e.action == "account_connected")
    assert connected.client_id is not None
    assert connected.request_id is not None
    assert connected.account_id is not None


async def test_accounts_listing_pages_and_filters(live: Live) -> None:
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        assert (await live.connect(email)).status_code == 200
    headers = await live.broker.headers(Permission.ACCOUNTS_READ)
    first = (await live.broker.client.get("/v1/accounts?limit=2", headers=headers)).json()
    assert len(first["items"]) == 2
    rest = (
        await live.broker.client.get(
            f"/v1/accounts?limit=2&cursor={first['next_cursor']}", headers=headers
        )
    ).json()
    assert rest["next_cursor"] is None
    emails = [a["email"] for a in first["items"] + rest["items"]]
    assert sorted(emails) == ["a@example.com", "b@example.com", "c@example.com"]
    filtered = (
        await live.broker.client.get("/v1/accounts?email=B@example.com", headers=headers)
    ).json()
    assert [a["email"] for a in filtered["items"]] == ["b@example.com"]
    bad = await live.broker.client.get("/v1/accounts?cursor=garbage", headers=headers)
    assert bad.json()["code"] == "invalid_cursor"
    missing = await live.broker.client.get("/v1/accounts/nobody@example.com", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "account_not_found"


async def test_rotated_signing_keys_are_refetched_at_most_once_per_interval(live: Live) -> None:
    """Google rotates its keys: an unknown kid refetches the key set, but not more than once
    per JWKS_REFETCH_INTERVAL_SECONDS, however many tokens name kids the set lacks."""
    oauth = live.broker.state.connect.oauth
    calls = live.provider.state.calls

    async def rotate() -> None:
        rotated = await live.browser.post(f"{live.provider.url}/_sandbox/keys/rotate")
        assert rotated.status_code == 200

    def interval_passes() -> None:
        oauth._jwks_fetched_at -= JWKS_REFETCH_INTERVAL_SECONDS + 1

    assert (await live.connect("alice@example.com")).status_code == 200
    assert calls["jwks"] == 1
    await rotate()
    interval_passes()
    assert (await live.connect("bob@example.com")).status_code == 200
    assert calls["jwks"] == 2  # the new kid was unknown: one refetch

    await rotate()  # again, right after that refetch
    for _ in range(2):
        refused = await live.connect("carol@example.com")
        assert refused.status_code == 502
        assert "upstream_error" in refused.text
    assert calls["jwks"] == 2  # within the interval: no refetch, however often asked
    interval_passes()
    assert (await live.connect("carol@example.com")).status_code == 200
    assert calls["jwks"] == 3
