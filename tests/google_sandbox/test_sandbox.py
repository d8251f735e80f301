"""The sandbox's wire format, pinned against Google's documented shapes.

The sandbox runs as a real server on 127.0.0.1; requests are made the way a
browser, the broker or Google's own client library would make them.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from google_sandbox import SandboxState, create_sandbox_app
from google_sandbox.browser import consent
from google_sandbox.mailbox import compile_query, generate_mailbox
from tests.support.hygiene import register_secret
from tests.support.servers import serve

CLIENT_ID = "sandbox-test.apps.googleusercontent.com"
CLIENT_SECRET = register_secret("sandbox-test-secret")
REDIRECT = "http://127.0.0.1:1/callback"
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
SCOPES = f"openid email profile {GMAIL}"
# What Google answers for SCOPES: email and profile by their long names.
GRANTED = {
    "openid",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
    GMAIL,
}
VERIFIER = "v" * 64


@dataclass
class Sandbox:
    state: SandboxState
    url: str
    http: httpx.AsyncClient

    def authorize_url(self, **overrides: str) -> str:
        params = {
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": SCOPES,
            "state": "st-1",
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
            "code_challenge": create_s256_code_challenge(VERIFIER),
            "code_challenge_method": "S256",
        }
        params.update(overrides)
        return f"{self.url}/o/oauth2/v2/auth?{urlencode(params)}"

    async def code(self, email: str = "alice@example.com", **overrides: str) -> str:
        answer = await consent(self.http, self.authorize_url(**overrides), email=email)
        return register_secret(answer["code"])

    async def token(self, form: dict[str, str], *, basic: bool = False) -> httpx.Response:
        if basic:
            auth = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            return await self.http.post(
                f"{self.url}/token", data=form, headers={"Authorization": f"Basic {auth}"}
            )
        return await self.http.post(
            f"{self.url}/token",
            data={**form, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        )

    async def tokens(self, email: str = "alice@example.com", **overrides: str) -> dict:
        code = await self.code(email, **overrides)
        response = await self.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": VERIFIER,
            }
        )
        assert response.status_code == 200, response.text
        body = response.json()
        for key in ("access_token", "refresh_token", "id_token"):
            if key in body:
                register_secret(body[key])
        return body

    async def gmail(self, token: str, user: str = "me", **params: object) -> httpx.Response:
        return await self.http.get(
            f"{self.url}/gmail/v1/users/{user}/messages",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    state = SandboxState(default_mailbox_size=1200)
    state.add_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    async with serve(create_sandbox_app(state)) as url, httpx.AsyncClient() as http:
        yield Sandbox(state, url, http)


# --------------------------------------------------------------------------- discovery


async def test_discovery_document_and_jwks(sandbox: Sandbox) -> None:
    doc = (await sandbox.http.get(f"{sandbox.url}/.well-known/openid-configuration")).json()
    assert doc["issuer"] == sandbox.url
    assert doc["authorization_endpoint"] == f"{sandbox.url}/o/oauth2/v2/auth"
    assert doc["token_endpoint"] == f"{sandbox.url}/token"
    assert doc["jwks_uri"] == f"{sandbox.url}/oauth2/v3/certs"
    assert doc["code_challenge_methods_supported"] == ["plain", "S256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post",
        "client_secret_basic",
    }
    jwks = (await sandbox.http.get(doc["jwks_uri"])).json()
    assert len(jwks["keys"]) == 2  # Google publishes two at a time
    for key in jwks["keys"]:
        assert key["kty"] == "RSA"
        assert key["alg"] == "RS256"
        assert "d" not in key  # public part only


# --------------------------------------------------------------------------- authorization


async def test_authorization_page_offers_consent(sandbox: Sandbox) -> None:
    sandbox.state.add_user("alice@example.com")
    page = await sandbox.http.get(sandbox.authorize_url(login_hint="alice@example.com"))
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert CLIENT_ID in page.text
    assert GMAIL in page.text
    assert 'value="alice@example.com" checked' in page.text
    assert 'name="decision" value="deny"' in page.text


@pytest.mark.parametrize(
    ("overrides", "status", "error"),
    [
        ({"client_id": "unknown"}, 401, "invalid_client"),
        ({"redirect_uri": "http://127.0.0.1:1/callback/"}, 400, "redirect_uri_mismatch"),
        ({"response_type": "token"}, 400, "invalid_request"),
        ({"scope": ""}, 400, "invalid_request"),
        ({"scope": "openid https://www.googleapis.com/auth/drive"}, 400, "invalid_scope"),
        ({"approval_prompt": "force"}, 400, "invalid_request"),
    ],
)
async def test_authorization_errors_are_shown_not_redirected(
    sandbox: Sandbox, overrides: dict[str, str], status: int, error: str
) -> None:
    response = await sandbox.http.get(sandbox.authorize_url(**overrides))
    assert response.status_code == status
    assert error in response.text
    assert "location" not in response.headers


async def test_consent_redirects_with_code_state_and_granted_scopes(sandbox: Sandbox) -> None:
    answer = await consent(sandbox.http, sandbox.authorize_url(), email="alice@example.com")
    assert answer["_redirect"] == REDIRECT
    assert answer["state"] == "st-1"
    assert answer["code"].startswith("4/0A")
    assert set(answer["scope"].split()) == GRANTED
    register_secret(answer["code"])


async def test_denied_consent_redirects_with_access_denied(sandbox: Sandbox) -> None:
    answer = await consent(sandbox.http, sandbox.authorize_url(), decision="deny")
    assert answer == {
        "error": "access_denied",
        "state": "st-1",
        "iss": sandbox.url,
        "_redirect": REDIRECT,
    }


async def test_unticked_scope_is_not_granted(sandbox: Sandbox) -> None:
    answer = await consent(
        sandbox.http, sandbox.authorize_url(), granted_scopes=["openid", "email", "profile"]
    )
    assert GMAIL not in answer["scope"].split()
    register_secret(answer["code"])


# --------------------------------------------------------------------------- token endpoint


@pytest.mark.parametrize("basic", [False, True], ids=["client_secret_post", "client_secret_basic"])
async def test_code_exchange_response_shape(sandbox: Sandbox, basic: bool) -> None:
    code = await sandbox.code()
    response = await sandbox.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        },
        basic=basic,
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token", "expires_in", "refresh_token", "scope", "token_type", "id_token"
    }  # fmt: skip
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert body["access_token"].startswith("ya29.")
    assert body["refresh_token"].startswith("1//")
    assert set(body["scope"].split()) == GRANTED
    for key in ("access_token", "refresh_token", "id_token"):
        register_secret(body[key])

    jwks = KeySet.import_key_set((await sandbox.http.get(f"{sandbox.url}/oauth2/v3/certs")).json())
    claims = jwt.decode(body["id_token"], jwks, algorithms=["RS256"]).claims
    user = sandbox.state.users["alice@example.com"]
    assert claims["iss"] == sandbox.url
    assert claims["aud"] == CLIENT_ID
    assert claims["azp"] == CLIENT_ID
    assert claims["sub"] == user.sub
    assert len(user.sub) == 21
    assert user.sub.isdigit()
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600


async def test_code_is_single_use(sandbox: Sandbox) -> None:
    code = await sandbox.code()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
    }
    assert (await sandbox.token(form)).status_code == 200
    again = await sandbox.token(form)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_verifier": "w" * 64}, "invalid_grant"),
        ({"code_verifier": None}, "invalid_grant"),
        ({"redirect_uri": "http://127.0.0.1:1/other"}, "redirect_uri_mismatch"),
        ({"code": "4/0Aforged"}, "invalid_grant"),
        ({"code": None}, "invalid_request"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": None}, "invalid_request"),
    ],
)
async def test_code_exchange_errors(
    sandbox: Sandbox, change: dict[str, str | None], error: str
) -> None:
    code = await sandbox.code()
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
        **change,
    }
    response = await sandbox.token({k: v for k, v in form.items() if v is not None})
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert "error_description" in response.json()


async def test_expired_code_is_invalid_grant(sandbox: Sandbox) -> None:
    code = await sandbox.code()
    sandbox.state.codes[code].expires_at = 0
    response = await sandbox.token(
        {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
         "code_verifier": VERIFIER}
    )  # fmt: skip
    assert response.json()["error"] == "invalid_grant"


async def test_client_authentication_failures(sandbox: Sandbox) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "1//x"}
    wrong = await sandbox.http.post(
        f"{sandbox.url}/token",
        data={**form, "client_id": CLIENT_ID, "client_secret": "wrong"},
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    unknown = await sandbox.http.post(
        f"{sandbox.url}/token", data={**form, "client_id": "nobody", "client_secret": "x"}
    )
    assert unknown.status_code == 401
    assert unknown.json() == {
        "error": "invalid_client",
        "error_description": "The OAuth client was not found.",
    }
    json_body = await sandbox.http.post(f"{sandbox.url}/token", json=form)
    assert json_body.status_code == 400
    assert json_body.json()["error"] == "invalid_request"


async def test_refresh_token_only_on_first_or_forced_consent(sandbox: Sandbox) -> None:
    first = await sandbox.tokens()
    assert "refresh_token" in first
    again = await sandbox.tokens(prompt="select_account")
    assert "refresh_token" not in again
    forced = await sandbox.tokens(prompt="consent")
    assert forced["refresh_token"] != first["refresh_token"]


async def test_refresh_grant_omits_refresh_token(sandbox: Sandbox) -> None:
    first = await sandbox.tokens()
    response = await sandbox.token(
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert response.status_code == 200
    body = response.json()
    register_secret(body["access_token"])
    register_secret(body["id_token"])
    assert "refresh_token" not in body
    assert body["access_token"] != first["access_token"]
    assert sandbox.state.calls["token:refresh_token"] == 1


async def test_rotation_and_replay_kill_the_grant(sandbox: Sandbox) -> None:
    sandbox.state.rotate_refresh_tokens = True
    first = await sandbox.tokens()
    old = first["refresh_token"]
    rotated = (await sandbox.token({"grant_type": "refresh_token", "refresh_token": old})).json()
    new = register_secret(rotated["refresh_token"])
    assert new != old
    replay = await sandbox.token({"grant_type": "refresh_token", "refresh_token": old})
    assert replay.json()["error"] == "invalid_grant"
    after = await sandbox.token({"grant_type": "refresh_token", "refresh_token": new})
    assert after.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }


async def test_seeded_users_have_live_grants_found_by_lookup(sandbox: Sandbox) -> None:
    emails = [f"seed{i}@example.com" for i in range(3)]
    answer = await sandbox.http.post(
        f"{sandbox.url}/_sandbox/seed", json={"client_id": CLIENT_ID, "emails": emails}
    )
    assert answer.status_code == 200
    seeded = answer.json()
    assert [entry["email"] for entry in seeded] == emails
    assert [entry["sub"] for entry in seeded] == [sandbox.state.users[e].sub for e in emails]
    for entry in seeded:
        register_secret(entry["refresh_token"])
        register_secret(entry["access_token"])
    messages = await sandbox.http.get(
        f"{sandbox.url}/gmail/v1/users/me/messages",
        headers={"Authorization": f"Bearer {seeded[1]['access_token']}"},
    )
    assert messages.status_code == 200
    refreshed = await sandbox.token(
        {"grant_type": "refresh_token", "refresh_token": seeded[2]["refresh_token"]}
    )
    assert refreshed.status_code == 200
    register_secret(refreshed.json()["access_token"])
    # Revoking one user kills that user's grant only.
    assert sandbox.state.revoke_user(emails[0]) == 1
    dead = await sandbox.token(
        {"grant_type": "refresh_token", "refresh_token": seeded[0]["refresh_token"]}
    )
    assert dead.json()["error"] == "invalid_grant"
    assert sandbox.state.live_grant(emails[1], CLIENT_ID) is not None


async def test_expired_access_tokens_are_dropped_when_a_grant_gets_a_new_one(
    sandbox: Sandbox,
) -> None:
    first = await sandbox.tokens()
    (grant,) = sandbox.state.grants.values()
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    for _ in range(3):
        sandbox.state.expire_access_tokens("alice@example.com")
        refreshed = await sandbox.token(form)
        register_secret(refreshed.json()["access_token"])
    assert len(grant.access_tokens) == 1
    assert set(sandbox.state.access_tokens) == grant.access_tokens


async def test_revoke_kills_the_whole_grant(sandbox: Sandbox) -> None:
    first = await sandbox.tokens()
    revoked = await sandbox.http.post(
        f"{sandbox.url}/revoke", data={"token": first["access_token"]}
    )
    assert revoked.status_code == 200
    refresh = await sandbox.token(
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"
    again = await sandbox.http.post(f"{sandbox.url}/revoke", data={"token": first["access_token"]})
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_token"


async def test_userinfo_shapes(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    user = sandbox.state.users["alice@example.com"]
    oidc = (await sandbox.http.get(f"{sandbox.url}/v1/userinfo", headers=headers)).json()
    assert oidc == {
        "sub": user.sub,
        "email": "alice@example.com",
        "email_verified": True,
        "name": "Alice",
        "given_name": "Alice",
    }
    v2 = (await sandbox.http.get(f"{sandbox.url}/oauth2/v2/userinfo", headers=headers)).json()
    assert v2 == {
        "id": user.sub,
        "email": "alice@example.com",
        "verified_email": True,
        "name": "Alice",
        "given_name": "Alice",
    }
    anonymous = await sandbox.http.get(f"{sandbox.url}/v1/userinfo")
    assert anonymous.status_code == 401


# --------------------------------------------------------------------------- Gmail


async def test_gmail_auth_errors_have_googles_shape(sandbox: Sandbox) -> None:
    response = await sandbox.gmail("ya29.nonsense")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="https://accounts.google.com/"'
    )
    error = response.json()["error"]
    assert error["code"] == 401
    assert error["status"] == "UNAUTHENTICATED"
    assert error["errors"][0] == {
        "message": "Invalid Credentials",
        "domain": "global",
        "reason": "authError",
        "location": "Authorization",
        "locationType": "header",
    }
    no_gmail = await sandbox.tokens(scope="openid email")
    forbidden = await sandbox.gmail(no_gmail["access_token"])
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["errors"][0]["reason"] == "insufficientPermissions"


async def test_gmail_expired_and_revoked_tokens_are_401(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    assert (await sandbox.gmail(tokens["access_token"])).status_code == 200
    sandbox.state.expire_access_tokens("alice@example.com")
    assert (await sandbox.gmail(tokens["access_token"])).status_code == 401


async def test_gmail_pagination_semantics(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    token = tokens["access_token"]
    sandbox.state.users["alice@example.com"].mailbox_size = 1001
    default = (await sandbox.gmail(token)).json()
    assert len(default["messages"]) == 100  # Gmail's default page size
    ids: list[str] = []
    page_token = None
    pages = 0
    while True:
        params: dict[str, object] = {"maxResults": 500, "includeSpamTrash": "true"}
        if page_token:
            params["pageToken"] = page_token
        body = (await sandbox.gmail(token, **params)).json()
        pages += 1
        assert set(body["messages"][0]) == {"id", "threadId"}
        ids += [m["id"] for m in body["messages"]]
        page_token = body.get("nextPageToken")
        if page_token is None:
            break
    assert pages == 3
    assert ids == [m.id for m in generate_mailbox("alice@example.com", 1001)]
    assert len(set(ids)) == len(ids)
    too_many = (await sandbox.gmail(token, maxResults=5000)).json()
    assert len(too_many["messages"]) == 500


async def test_gmail_empty_result_has_no_messages_key(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    body = (await sandbox.gmail(tokens["access_token"], q="from:nobody-at-all")).json()
    assert body == {"resultSizeEstimate": 0}
    sandbox.state.users["alice@example.com"].mailbox_size = 0
    assert (await sandbox.gmail(tokens["access_token"])).json() == {"resultSizeEstimate": 0}


async def test_gmail_page_tokens_are_tamper_proof_and_bound_to_the_query(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    first = (await sandbox.gmail(tokens["access_token"], maxResults=10)).json()
    token = first["nextPageToken"]
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (tampered, "garbage"):
        response = await sandbox.gmail(tokens["access_token"], maxResults=10, pageToken=bad)
        assert response.status_code == 400
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    other_query = await sandbox.gmail(
        tokens["access_token"], maxResults=10, pageToken=token, q="is:unread"
    )
    assert other_query.status_code == 400


async def test_gmail_query_and_label_filters(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    mailbox = generate_mailbox("alice@example.com", 1200)

    async def listed(**params: object) -> list[str]:
        body = (await sandbox.gmail(tokens["access_token"], maxResults=500, **params)).json()
        ids = [m["id"] for m in body.get("messages", [])]
        while "nextPageToken" in body:
            body = (
                await sandbox.gmail(
                    tokens["access_token"],
                    maxResults=500,
                    pageToken=body["nextPageToken"],
                    **params,
                )
            ).json()
            ids += [m["id"] for m in body.get("messages", [])]
        return ids

    def expect(predicate) -> list[str]:
        return [m.id for m in mailbox if predicate(m)]

    visible = lambda m: not {"SPAM", "TRASH"} & m.labels  # noqa: E731
    unread = await listed(q="is:unread")
    assert unread == expect(lambda m: visible(m) and "UNREAD" in m.labels)
    assert 0 < len(unread) < 1200
    assert await listed(labelIds=["INBOX", "UNREAD"]) == expect(
        lambda m: {"INBOX", "UNREAD"} <= m.labels
    )
    assert await listed(q="from:ada@analytical.example") == expect(
        lambda m: visible(m) and "ada@analytical.example" in m.sender
    )
    assert await listed(q="subject:invoice -is:unread") == expect(
        lambda m: visible(m) and "invoice" in m.subject.lower() and "UNREAD" not in m.labels
    )
    assert await listed(q="label:receipts") == expect(
        lambda m: visible(m) and "Label_1" in m.labels
    )
    spam = await listed(q="in:spam")
    assert spam == expect(lambda m: "SPAM" in m.labels)
    assert spam
    assert len(await listed(includeSpamTrash="true")) == 1200
    middle = mailbox[600].internal_date
    after = await listed(q=f"after:{middle}")
    assert after == expect(lambda m: visible(m) and m.internal_date >= middle)


def test_mailbox_is_deterministic_newest_first_and_threaded() -> None:
    first = generate_mailbox("bob@example.com", 3000)
    assert first == generate_mailbox("bob@example.com", 3000)
    assert first != generate_mailbox("carol@example.com", 3000)
    dates = [m.internal_date for m in first]
    assert dates == sorted(dates, reverse=True)
    assert len({m.id for m in first}) == 3000
    threads = {m.thread_id for m in first}
    assert 1000 < len(threads) < 3000
    assert all(len(m.id) == 16 and int(m.id, 16) for m in first)


def test_query_free_words_and_quoted_phrases() -> None:
    mailbox = generate_mailbox("bob@example.com", 500)
    phrase = compile_query('"meeting notes"', [], False)
    assert [m for m in mailbox if phrase(m)] == [
        m for m in mailbox
        if "meeting notes" in m.subject.lower() and not {"SPAM", "TRASH"} & m.labels
    ]  # fmt: skip


# --------------------------------------------------------------------------- faults


async def test_faults_answer_as_google_does_and_are_counted(sandbox: Sandbox) -> None:
    tokens = await sandbox.tokens()
    state = sandbox.state
    from google_sandbox.records import FaultRule

    state.faults.append(FaultRule("gmail.messages.list", status=429, retry_after=7, times=1))
    state.faults.append(
        FaultRule("gmail.messages.list", status=403, reason="userRateLimitExceeded", times=1)
    )
    state.faults.append(FaultRule("gmail.messages.list", status=503, times=1))
    limited = await sandbox.gmail(tokens["access_token"])
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    user_limited = await sandbox.gmail(tokens["access_token"])
    assert user_limited.status_code == 403
    assert user_limited.json()["error"]["errors"][0]["reason"] == "userRateLimitExceeded"
    assert user_limited.json()["error"]["errors"][0]["domain"] == "usageLimits"
    unavailable = await sandbox.gmail(tokens["access_token"])
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["errors"][0]["reason"] == "backendError"
    assert (await sandbox.gmail(tokens["access_token"])).status_code == 200
    assert [c.status for c in state.calls_to("gmail.messages.list")] == [429, 403, 503, 200]
    assert state.calls["gmail.messages.list"] == 4


async def test_dropped_connection_fault(sandbox: Sandbox) -> None:
    control = await sandbox.http.post(
        f"{sandbox.url}/_sandbox/faults", json={"endpoint": "token", "kind": "drop", "times": 1}
    )
    assert control.status_code == 201
    with pytest.raises(httpx.RemoteProtocolError):
        await sandbox.token({"grant_type": "refresh_token", "refresh_token": "1//x"})
    counters = (await sandbox.http.get(f"{sandbox.url}/_sandbox/counters")).json()
    assert counters["calls"]["token"] == 1


async def test_control_api_settings_users_and_revocation(sandbox: Sandbox) -> None:
    created = await sandbox.http.post(
        f"{sandbox.url}/_sandbox/users", json={"email": "Dora@Example.com", "mailbox_size": 7}
    )
    assert created.json()["mailbox_size"] == 7
    settings = await sandbox.http.put(
        f"{sandbox.url}/_sandbox/settings", json={"access_token_lifetime": 60}
    )
    assert settings.json()["access_token_lifetime"] == 60
    tokens = await sandbox.tokens("dora@example.com")
    assert tokens["expires_in"] == 60
    body = (await sandbox.gmail(tokens["access_token"])).json()
    assert len(body["messages"]) <= 7
    revoked = await sandbox.http.post(f"{sandbox.url}/_sandbox/users/dora@example.com/revoke")
    assert revoked.json() == {"revoked": 1}
    assert (await sandbox.gmail(tokens["access_token"])).status_code == 401


# --------------------------------------------------------------------------- Google's client


async def test_googles_python_client_lists_messages(sandbox: Sandbox) -> None:
    """The requests google-api-python-client sends are answered like Google answers them."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    tokens = await sandbox.tokens()
    sandbox.state.users["alice@example.com"].mailbox_size = 250

    def list_all() -> tuple[list[str], int]:
        service = build(
            "gmail",
            "v1",
            credentials=Credentials(tokens["access_token"]),
            client_options={"api_endpoint": sandbox.url + "/"},
            static_discovery=True,
            cache_discovery=False,
        )
        ids: list[str] = []
        calls = 0
        request = service.users().messages().list(userId="me", q="-in:spam")
        while request is not None:
            response = request.execute()
            calls += 1
            ids += [m["id"] for m in response.get("messages", [])]
            request = service.users().messages().list_next(request, response)
        return ids, calls

    ids, calls = await asyncio.to_thread(list_all)
    visible = [
        m.id for m in generate_mailbox("alice@example.com", 250) if not {"SPAM", "TRASH"} & m.labels
    ]
    assert ids == visible
    assert calls == math.ceil(len(visible) / 100)
