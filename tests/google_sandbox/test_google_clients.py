"""Google's own client libraries against the sandbox: each difference from Google, pinned.

The sandbox runs as a real server on 127.0.0.1; google-auth-oauthlib's `Flow`, google-auth
(ID-token verification, `Credentials.refresh`) and google-api-python-client (listing,
`HttpError`) drive it exactly as they would drive Google. They are synchronous, so each
call runs in a thread while the sandbox serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from google_sandbox import SandboxState, create_sandbox_app
from google_sandbox.browser import consent
from google_sandbox.mailbox import generate_mailbox
from tests.support.hygiene import register_secret
from tests.support.servers import serve

CLIENT_ID = "google-clients.apps.googleusercontent.com"
CLIENT_SECRET = register_secret("google-clients-secret")
REDIRECT = "http://127.0.0.1:1/callback"
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
EMAIL = "https://www.googleapis.com/auth/userinfo.email"
PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
ALICE = "alice@example.com"


@pytest.fixture(autouse=True)
def plain_http_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """oauthlib refuses plain-http redirect URLs; the sandbox is http on loopback.

    (The client libraries' DEBUG logs, which hold codes and tokens, are kept out of the
    run log for the whole suite: tests/support/hygiene.py.)
    """
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


class Google:
    """The sandbox, and Google's libraries pointed at it."""

    def __init__(self, state: SandboxState, url: str, browser: httpx.AsyncClient) -> None:
        self.state = state
        self.url = url
        self.browser = browser

    def flow(self, scopes: list[str], redirect_uri: str = REDIRECT) -> Any:
        from google_auth_oauthlib.flow import Flow

        config = {
            "web": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "auth_uri": f"{self.url}/o/oauth2/v2/auth",
                "token_uri": f"{self.url}/token",
                "redirect_uris": [REDIRECT],
            }
        }
        return Flow.from_client_config(config, scopes=scopes, redirect_uri=redirect_uri)

    async def authorize(self, flow: Any, email: str = ALICE, **params: str) -> str:
        """The user consents in the browser; the redirect URL the app receives."""
        url, _ = flow.authorization_url(prompt="consent", login_hint=email, **params)
        answer = await consent(self.browser, url, email=email)
        return REDIRECT + "?" + urlencode({k: v for k, v in answer.items() if k != "_redirect"})

    async def connect(self, scopes: list[str], email: str = ALICE, **params: str) -> Any:
        """A Flow that went through consent and the code exchange; its token is registered."""
        flow = self.flow(scopes)
        redirect = await self.authorize(flow, email, **params)
        await asyncio.to_thread(flow.fetch_token, authorization_response=redirect)
        for key in ("access_token", "refresh_token", "id_token"):
            if flow.oauth2session.token.get(key):
                register_secret(flow.oauth2session.token[key])
        return flow

    def gmail(self, access_token: str) -> Any:
        from google.oauth2.credentials import Credentials
        from googleapiclient.discovery import build

        return build(
            "gmail", "v1", credentials=Credentials(access_token), static_discovery=True,
            cache_discovery=False, client_options={"api_endpoint": self.url + "/"},
        )  # fmt: skip

    def verify(self, id_token: str, certs: str = "v1") -> dict[str, Any]:
        from google.auth.transport.requests import Request
        from google.oauth2 import id_token as id_tokens

        claims: dict[str, Any] = id_tokens.verify_token(
            id_token, Request(), audience=CLIENT_ID, certs_url=f"{self.url}/oauth2/{certs}/certs"
        )
        return claims


@pytest.fixture
async def google() -> AsyncIterator[Google]:
    state = SandboxState(default_mailbox_size=300)
    state.add_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    async with serve(create_sandbox_app(state)) as url, httpx.AsyncClient() as browser:
        state.issuer = url
        yield Google(state, url, browser)


def http_error(call: Any) -> Any:
    from googleapiclient.errors import HttpError

    with pytest.raises(HttpError) as caught:
        call.execute()
    return caught.value


# --------------------------------------------------------------------------- 1. scope names


async def test_token_response_names_email_and_profile_as_google_does(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oauthlib warns exactly as it does against Google: the short names come back long."""
    flow = google.flow(["openid", "email", "profile", GMAIL])
    redirect = await google.authorize(flow)
    with pytest.raises(Warning, match="Scope has changed") as changed:
        await asyncio.to_thread(flow.fetch_token, authorization_response=redirect)
    assert EMAIL in str(changed.value)
    assert PROFILE in str(changed.value)
    register_secret(changed.value.token["access_token"])  # type: ignore[attr-defined]
    register_secret(changed.value.token["refresh_token"])  # type: ignore[attr-defined]

    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect(["openid", "email", "profile", GMAIL])
    credentials = flow.credentials
    assert set(credentials.granted_scopes) == {"openid", EMAIL, PROFILE, GMAIL}
    claims = await asyncio.to_thread(google.verify, credentials.id_token)
    assert claims["email"] == ALICE
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice"


@pytest.mark.parametrize(
    "scopes", [["email", "profile"], [EMAIL, PROFILE]], ids=["short names", "userinfo URLs"]
)
async def test_either_spelling_grants_the_email_and_adds_openid(
    google: Google, monkeypatch: pytest.MonkeyPatch, scopes: list[str]
) -> None:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect(scopes)
    token = flow.oauth2session.token
    assert set(token["scope"]) == {"openid", EMAIL, PROFILE}
    claims = await asyncio.to_thread(google.verify, token["id_token"])
    assert claims["email"] == ALICE
    userinfo = await google.browser.get(
        f"{google.url}/v1/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert userinfo.json()["email"] == ALICE


async def test_refresh_with_the_requested_spelling_works_and_cannot_widen(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    """google-auth sends its scopes on refresh; Google compares them as the same scopes."""
    from google.auth.exceptions import RefreshError
    from google.auth.transport.requests import Request
    from google.oauth2.credentials import Credentials

    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect(["openid", "email", "profile", GMAIL])
    credentials = flow.credentials
    credentials.token = None
    await asyncio.to_thread(credentials.refresh, Request())
    register_secret(credentials.token)
    assert set(credentials.granted_scopes) == {"openid", EMAIL, PROFILE, GMAIL}
    assert credentials.id_token is not None

    def refresh_with(scopes: list[str]) -> None:
        Credentials(
            None, refresh_token=credentials.refresh_token, client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET, token_uri=f"{google.url}/token", scopes=scopes,
        ).refresh(Request())  # fmt: skip

    with pytest.raises(RefreshError, match="invalid_scope"):
        await asyncio.to_thread(refresh_with, ["https://www.googleapis.com/auth/gmail.modify"])
    with pytest.raises(
        RefreshError, match=r"Some requested scopes were invalid. \{invalid=\[x\]\}"
    ):
        await asyncio.to_thread(refresh_with, ["x"])


# --------------------------------------------------------------------------- 2. insufficient scope


async def test_gmail_403_for_a_missing_scope_carries_error_info_and_www_authenticate(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect(["openid", "email"])
    service = google.gmail(flow.oauth2session.token["access_token"])
    error = await asyncio.to_thread(http_error, service.users().messages().list(userId="me"))
    assert error.status_code == 403
    assert error.reason == "Request had insufficient authentication scopes."
    (info,) = error.error_details
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    assert info["domain"] == "googleapis.com"
    assert info["metadata"]["service"] == "gmail.googleapis.com"
    challenge = error.resp["www-authenticate"]
    assert challenge.startswith('Bearer realm="https://accounts.google.com/"')
    assert 'error="insufficient_scope"' in challenge
    assert GMAIL in challenge


async def test_only_the_methods_scopes_list_messages(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gmail.send is a Gmail scope, but not one users.messages.list accepts."""
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect(["https://www.googleapis.com/auth/gmail.send"])
    service = google.gmail(flow.oauth2session.token["access_token"])
    error = await asyncio.to_thread(http_error, service.users().messages().list(userId="me"))
    assert error.status_code == 403
    assert error.error_details[0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


async def test_metadata_scope_refuses_q_even_beside_readonly(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect([GMAIL, "https://www.googleapis.com/auth/gmail.metadata"])
    service = google.gmail(flow.oauth2session.token["access_token"])
    error = await asyncio.to_thread(
        http_error, service.users().messages().list(userId="me", q="is:unread")
    )
    assert error.status_code == 403
    assert error.reason == "Metadata scope does not support 'q' parameter"
    assert error.error_details[0]["reason"] == "forbidden"
    unfiltered = await asyncio.to_thread(service.users().messages().list(userId="me").execute)
    assert unfiltered["messages"]


# --------------------------------------------------------------------------- 3, 6, 7: Gmail answers


@pytest.fixture
async def gmail(google: Google, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    flow = await google.connect(["openid", "email", GMAIL])
    return google.gmail(flow.oauth2session.token["access_token"])


async def test_unknown_label_is_400_invalid_label(gmail: Any) -> None:
    messages = gmail.users().messages()
    error = await asyncio.to_thread(
        http_error, messages.list(userId="me", labelIds=["INBOX", "Label_99"])
    )
    assert error.status_code == 400
    assert error.reason == "Invalid label: Label_99"
    assert error.error_details == [
        {"message": "Invalid label: Label_99", "domain": "global", "reason": "invalidArgument"}
    ]
    # Known labels, system ones without seeded mail included, are fine.
    for label in ("DRAFT", "CHAT", "Label_1", "CATEGORY_FORUMS"):
        await asyncio.to_thread(messages.list(userId="me", labelIds=[label]).execute)


async def test_error_messages_repeat_the_specific_message(gmail: Any) -> None:
    error = await asyncio.to_thread(
        http_error, gmail.users().messages().list(userId="me", pageToken="not-a-token")
    )
    assert error.status_code == 400
    assert error.reason == "Invalid pageToken"
    assert error.error_details == [
        {"message": "Invalid pageToken", "domain": "global", "reason": "invalidArgument"}
    ]


async def test_result_size_estimate_is_an_estimate_and_list_next_gets_everything(
    gmail: Any, google: Google
) -> None:
    def list_all() -> tuple[list[str], list[int]]:
        ids: list[str] = []
        estimates: list[int] = []
        request = gmail.users().messages().list(userId="me", includeSpamTrash=True)
        while request is not None:
            page = request.execute()
            estimates.append(page["resultSizeEstimate"])
            ids += [m["id"] for m in page.get("messages", [])]
            request = gmail.users().messages().list_next(request, page)
        return ids, estimates

    ids, estimates = await asyncio.to_thread(list_all)
    assert ids == [m.id for m in generate_mailbox(ALICE, 300)]
    assert set(estimates) == {201}  # not the 300 that match
    nothing = await asyncio.to_thread(
        gmail.users().messages().list(userId="me", q="zzzznomatch").execute
    )
    assert nothing == {"resultSizeEstimate": 0}


async def test_fields_selects_a_partial_response(gmail: Any) -> None:
    page = await asyncio.to_thread(
        gmail.users().messages().list(userId="me", fields="messages/id,nextPageToken").execute
    )
    assert set(page) == {"messages", "nextPageToken"}
    assert all(set(message) == {"id"} for message in page["messages"])
    nested = await asyncio.to_thread(
        gmail.users().messages().list(userId="me", fields="messages(threadId)").execute
    )
    assert set(nested) == {"messages"}
    assert set(nested["messages"][0]) == {"threadId"}
    error = await asyncio.to_thread(
        http_error, gmail.users().messages().list(userId="me", fields="pagetoken,messages(id)")
    )
    assert error.status_code == 400
    assert error.reason == "Invalid field selection pagetoken"


# --------------------------------------------------------------------------- 4. redirect mismatch


async def test_code_exchanged_with_another_redirect_uri_is_redirect_uri_mismatch(
    google: Google,
) -> None:
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error

    flow = google.flow(["openid", "email"])
    redirect = await google.authorize(flow)
    register_secret(parse_qs(urlsplit(redirect).query)["code"][0])
    flow.redirect_uri = "http://127.0.0.1:1/elsewhere"
    with pytest.raises(OAuth2Error) as refused:
        await asyncio.to_thread(flow.fetch_token, authorization_response=redirect)
    assert refused.value.error == "redirect_uri_mismatch"
    assert refused.value.status_code == 400


# --------------------------------------------------------------------------- 5. certificates


async def test_two_keys_in_both_formats_and_rotation(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    pem = (await google.browser.get(f"{google.url}/oauth2/v1/certs")).json()
    jwks = (await google.browser.get(f"{google.url}/oauth2/v3/certs")).json()
    assert len(pem) == 2
    assert set(pem) == {key["kid"] for key in jwks["keys"]}
    assert all(cert.startswith("-----BEGIN CERTIFICATE-----") for cert in pem.values())

    before = (await google.connect(["openid", "email"])).oauth2session.token["id_token"]
    for certs in ("v1", "v3"):  # google-auth's default format, and the JWKS
        assert (await asyncio.to_thread(google.verify, before, certs))["email"] == ALICE

    rotated = await google.browser.post(f"{google.url}/_sandbox/keys/rotate")
    new_kid = rotated.json()["signing_kid"]
    assert new_kid not in pem
    after = (await google.connect(["openid", "email"])).oauth2session.token["id_token"]
    assert (await asyncio.to_thread(google.verify, after, "v1"))["sub"]
    assert (await asyncio.to_thread(google.verify, before, "v3"))["sub"]  # still published

    await google.browser.post(f"{google.url}/_sandbox/keys/rotate")
    with pytest.raises(ValueError, match="not found"):
        await asyncio.to_thread(google.verify, before, "v1")  # its key is gone now


# --------------------------------------------------------------------------- 7. smaller ones


async def test_id_token_carries_at_hash_and_nonce(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    token = (await google.connect(["openid", "email"], nonce="n-0S6_WzA2Mj")).oauth2session.token
    claims = await asyncio.to_thread(google.verify, token["id_token"])
    digest = hashlib.sha256(token["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert claims["nonce"] == "n-0S6_WzA2Mj"


async def test_prompt_none_with_an_existing_grant_answers_a_code(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    await google.connect(["openid", "email", GMAIL])

    async def silently(flow: Any, **params: str) -> dict[str, str]:
        url, _ = flow.authorization_url(prompt="none", **params)
        response = await google.browser.get(url)
        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith(REDIRECT + "?")
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    flow = google.flow(["openid", "email", GMAIL])
    answer = await silently(flow, login_hint=ALICE)
    assert answer["prompt"] == "none"
    redirect = REDIRECT + "?" + urlencode(answer)
    token = await asyncio.to_thread(flow.fetch_token, authorization_response=redirect)
    register_secret(token["access_token"])
    assert "refresh_token" not in token  # only a consent issues one
    # The consent page left a session: no login_hint needed from this browser.
    assert "code" in await silently(google.flow(["openid", "email"]))
    register_secret((await silently(google.flow(["openid"])))["code"])

    wider = await silently(google.flow(["https://www.googleapis.com/auth/gmail.modify"]))
    assert wider["error"] == "consent_required"
    google.state.add_user("bob@example.com")
    assert (await silently(google.flow(["openid"]), login_hint="bob@example.com"))[
        "error"
    ] == "consent_required"
    async with httpx.AsyncClient() as stranger:
        url, _ = google.flow(["openid"]).authorization_url(prompt="none")
        answer = parse_qs(urlsplit((await stranger.get(url)).headers["location"]).query)
    assert answer["error"] == ["login_required"]


# --------------------------------------------------------------------------- 8. under a prefix


async def test_discovery_under_a_mount_prefix_names_working_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in dev mode: the sandbox mounted at /sandbox, a client following discovery only."""
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    state = SandboxState(default_mailbox_size=10)
    state.add_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    outer = FastAPI()
    outer.mount("/sandbox", create_sandbox_app(state))
    async with serve(outer) as root, httpx.AsyncClient() as browser:
        state.issuer = root + "/sandbox"
        doc = (await browser.get(f"{root}/sandbox/.well-known/openid-configuration")).json()
        for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint",
                     "revocation_endpoint", "jwks_uri"):  # fmt: skip
            assert doc[name].startswith(f"{root}/sandbox/"), name
        assert (await browser.get(doc["jwks_uri"])).status_code == 200
        sandbox = Google(state, f"{root}/sandbox", browser)
        flow = sandbox.flow(["openid", "email"])
        flow.client_config["auth_uri"] = doc["authorization_endpoint"]
        flow.client_config["token_uri"] = doc["token_endpoint"]
        redirect = await sandbox.authorize(flow)
        token = await asyncio.to_thread(flow.fetch_token, authorization_response=redirect)
        register_secret(token["access_token"])
        claims = await asyncio.to_thread(sandbox.verify, token["id_token"], "v3")
        assert claims["iss"] == doc["issuer"]
        userinfo = await browser.get(
            doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        assert userinfo.json()["email"] == ALICE
        revoked = await browser.post(
            doc["revocation_endpoint"], data={"token": token["access_token"]}
        )
        assert revoked.status_code == 200
