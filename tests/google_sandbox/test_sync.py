"""The sandbox's history, profile, watch and push, driven by Google's own client libraries.

google-api-python-client reads `users.history.list`, `users.getProfile`, `users.watch` and
`users.stop` from the sandbox as a real server on 127.0.0.1; google-auth verifies the
OIDC tokens on its Pub/Sub pushes, as Pub/Sub's own sample verifier does.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from google_sandbox import SandboxState, create_sandbox_app
from google_sandbox.history import FIRST_HISTORY_ID
from google_sandbox.pubsub import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TOPIC
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.servers import serve

EMAIL = "alice@example.com"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"


class Pushes:
    """A push endpoint: every request Pub/Sub (the sandbox) sends it, and what it answers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 204
        self.app = FastAPI()

        @self.app.post("/push")
        async def push(request: Request) -> Response:
            self.received.append((dict(request.headers), json.loads(await request.body())))
            return Response(status_code=self.status)


class Sandbox:
    def __init__(self, state: SandboxState, url: str, http: httpx.AsyncClient) -> None:
        self.state = state
        self.url = url
        self.http = http

    def gmail(self, email: str = EMAIL) -> Any:
        from google.oauth2.credentials import Credentials
        from googleapiclient.discovery import build

        grant = self.state.new_grant(email, "sync-test", {READONLY})
        token = register_secret(self.state.issue_access_token(grant)[0])
        return build(
            "gmail", "v1", credentials=Credentials(token), static_discovery=True,
            cache_discovery=False, client_options={"api_endpoint": self.url + "/"},
        )  # fmt: skip

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, f"{self.url}/_sandbox{path}", **kwargs)
        assert response.status_code < 300, response.text
        return response.json()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    state = SandboxState(default_mailbox_size=40)
    state.add_user(EMAIL)
    async with serve(create_sandbox_app(state)) as url, httpx.AsyncClient() as http:
        state.issuer = url
        yield Sandbox(state, url, http)


def read_history(gmail: Any, start: str, **filters: Any) -> tuple[list[dict[str, Any]], str]:
    """Every record since `start`, as the client library pages through them (2 a page)."""
    records: list[dict[str, Any]] = []
    request = (
        gmail.users().history().list(userId="me", startHistoryId=start, maxResults=2, **filters)
    )
    history_id = ""
    while request is not None:
        page = request.execute()
        records += page.get("history", [])
        history_id = page["historyId"]
        request = gmail.users().history().list_next(request, page)
    return records, history_id


async def test_history_records_added_relabelled_and_deleted_messages(sandbox: Sandbox) -> None:
    gmail = sandbox.gmail()
    profile = await asyncio.to_thread(gmail.users().getProfile(userId="me").execute)
    assert profile["emailAddress"] == EMAIL
    assert profile["messagesTotal"] == 40
    assert int(profile["historyId"]) >= FIRST_HISTORY_ID
    start = profile["historyId"]

    added = await sandbox.control(
        "POST", f"/users/{EMAIL}/mailbox/messages", json={"labelIds": ["INBOX", "UNREAD"]}
    )
    message = added["message"]
    await sandbox.control(
        "POST", f"/users/{EMAIL}/mailbox/messages/{message['id']}/modify",
        json={"addLabelIds": ["STARRED", "Label_2"], "removeLabelIds": ["UNREAD"]},
    )  # fmt: skip
    await sandbox.control("DELETE", f"/users/{EMAIL}/mailbox/messages/{message['id']}")

    records, current = await asyncio.to_thread(read_history, gmail, start)
    kinds = [next(k for k in r if k not in ("id", "messages")) for r in records]
    assert kinds == ["messagesAdded", "labelsAdded", "labelsRemoved", "messagesDeleted"]
    ids = [int(r["id"]) for r in records]
    assert ids == sorted(ids)
    assert int(start) < ids[0]
    assert ids[-1] == int(current)
    assert any(b - a > 1 for a, b in zip([int(start), *ids], ids, strict=False))  # gaps
    reference = {"id": message["id"], "threadId": message["id"]}
    assert all(r["messages"] == [reference] for r in records)
    assert records[0]["messagesAdded"] == [
        {"message": {**reference, "labelIds": ["INBOX", "UNREAD"]}}
    ]
    assert records[1]["labelsAdded"] == [
        {"message": {**reference, "labelIds": ["INBOX", "Label_2", "STARRED", "UNREAD"]},
         "labelIds": ["Label_2", "STARRED"]}
    ]  # fmt: skip
    assert records[2]["labelsRemoved"] == [
        {"message": {**reference, "labelIds": ["INBOX", "Label_2", "STARRED"]},
         "labelIds": ["UNREAD"]}
    ]  # fmt: skip
    assert records[3]["messagesDeleted"][0]["message"]["id"] == message["id"]

    # Nothing since the last record: no `history` at all, as Gmail answers.
    empty = await asyncio.to_thread(
        gmail.users().history().list(userId="me", startHistoryId=current).execute
    )
    assert empty == {"historyId": current}


async def test_changes_show_in_listings_and_messages(sandbox: Sandbox) -> None:
    gmail = sandbox.gmail()
    added = await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    message_id = added["message"]["id"]
    listed = await asyncio.to_thread(gmail.users().messages().list(userId="me").execute)
    assert listed["messages"][0]["id"] == message_id  # the newest first
    resource = await asyncio.to_thread(
        gmail.users().messages().get(userId="me", id=message_id, format="minimal").execute
    )
    assert resource["historyId"] == added["history"][0]["id"]
    assert resource["labelIds"] == ["CATEGORY_PERSONAL", "INBOX", "UNREAD"]
    seeded = listed["messages"][5]["id"]
    await sandbox.control("DELETE", f"/users/{EMAIL}/mailbox/messages/{seeded}")
    relisted = await asyncio.to_thread(gmail.users().messages().list(userId="me").execute)
    assert seeded not in [m["id"] for m in relisted["messages"]]
    profile = await asyncio.to_thread(gmail.users().getProfile(userId="me").execute)
    assert profile["messagesTotal"] == 40  # one added, one deleted


async def test_history_types_and_label_id_filter_the_records(sandbox: Sandbox) -> None:
    gmail = sandbox.gmail()
    start = (await asyncio.to_thread(gmail.users().getProfile(userId="me").execute))["historyId"]
    one = (await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={}))["message"]
    two = (
        await sandbox.control(
            "POST", f"/users/{EMAIL}/mailbox/messages", json={"labelIds": ["Label_1"]}
        )
    )["message"]
    await sandbox.control(
        "POST", f"/users/{EMAIL}/mailbox/messages/{one['id']}/modify",
        json={"removeLabelIds": ["INBOX"]},
    )  # fmt: skip
    added, _ = await asyncio.to_thread(read_history, gmail, start, historyTypes=["messageAdded"])
    assert [r["messagesAdded"][0]["message"]["id"] for r in added] == [one["id"], two["id"]]
    inbox, _ = await asyncio.to_thread(read_history, gmail, start, labelId="INBOX")
    # The message that left the inbox still counts: the change touched the label.
    assert [next(k for k in r if k not in ("id", "messages")) for r in inbox] == [
        "messagesAdded", "labelsRemoved",
    ]  # fmt: skip
    labelled, _ = await asyncio.to_thread(read_history, gmail, start, labelId="Label_1")
    assert [r["messages"][0]["id"] for r in labelled] == [two["id"]]


async def test_expired_history_answers_404_as_gmail_does(sandbox: Sandbox) -> None:
    from googleapiclient.errors import HttpError

    gmail = sandbox.gmail()
    start = (await asyncio.to_thread(gmail.users().getProfile(userId="me").execute))["historyId"]
    await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    await sandbox.control("POST", f"/users/{EMAIL}/mailbox/history/expire")
    with pytest.raises(HttpError) as caught:
        await asyncio.to_thread(
            gmail.users().history().list(userId="me", startHistoryId=start).execute
        )
    assert caught.value.status_code == 404
    assert caught.value.reason == "Requested entity was not found."
    # Older than anything kept: 404 too. The current id is a good start again.
    with pytest.raises(HttpError):
        await asyncio.to_thread(
            gmail.users().history().list(userId="me", startHistoryId="1").execute
        )
    current = (await asyncio.to_thread(gmail.users().getProfile(userId="me").execute))["historyId"]
    assert await asyncio.to_thread(
        gmail.users().history().list(userId="me", startHistoryId=current).execute
    ) == {"historyId": current}


async def test_history_expires_after_the_configured_age(sandbox: Sandbox) -> None:
    from googleapiclient.errors import HttpError

    gmail = sandbox.gmail()
    start = (await asyncio.to_thread(gmail.users().getProfile(userId="me").execute))["historyId"]
    await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    history = sandbox.state.users[EMAIL].history
    await sandbox.control("PUT", "/settings", json={"history_retention_seconds": 0.05})
    await eventually(lambda: history.history()[0].at < history.clock() - 0.05)
    with pytest.raises(HttpError) as caught:
        await asyncio.to_thread(
            gmail.users().history().list(userId="me", startHistoryId=start).execute
        )
    assert caught.value.status_code == 404


async def test_watch_and_stop_answer_as_gmail_does(sandbox: Sandbox) -> None:
    from googleapiclient.errors import HttpError

    gmail = sandbox.gmail()
    answer = await asyncio.to_thread(
        gmail.users().watch(userId="me", body={"topicName": DEFAULT_TOPIC}).execute
    )
    assert set(answer) == {"historyId", "expiration"}
    assert isinstance(answer["expiration"], str)
    watch = sandbox.state.pubsub.watches[EMAIL]
    assert int(answer["expiration"]) == int(watch.expires_at * 1000)
    assert (
        6.9 * 86_400 < watch.expires_at - sandbox.state.users[EMAIL].history.clock() <= 7 * 86_400
    )
    assert await asyncio.to_thread(gmail.users().stop(userId="me").execute) == ""
    assert EMAIL not in sandbox.state.pubsub.watches

    with pytest.raises(HttpError) as caught:
        await asyncio.to_thread(
            gmail.users().watch(userId="me", body={"topicName": "projects/other/topics/t"}).execute
        )
    assert caught.value.status_code == 403
    assert caught.value.reason == (
        "Error sending test message to Cloud PubSub projects/other/topics/t : "
        "User not authorized to perform this action."
    )
    with pytest.raises(HttpError) as malformed:
        await asyncio.to_thread(
            gmail.users().watch(userId="me", body={"topicName": "my-topic"}).execute
        )
    assert malformed.value.status_code == 400


@pytest.fixture
async def pushes(sandbox: Sandbox) -> AsyncIterator[tuple[Pushes, str]]:
    receiver = Pushes()
    async with serve(receiver.app) as url:
        await sandbox.control("PUT", "/pubsub", json={"push_endpoint": f"{url}/push"})
        yield receiver, f"{url}/push"


def verify_with_google_auth(token: str, audience: str, url: str) -> dict[str, Any]:
    from google.auth.transport.requests import Request as GoogleRequest
    from google.oauth2 import id_token

    claims: dict[str, Any] = id_token.verify_token(
        token, GoogleRequest(), audience=audience, certs_url=f"{url}/oauth2/v1/certs"
    )
    return claims


async def test_a_change_is_pushed_with_a_token_google_auth_verifies(
    sandbox: Sandbox, pushes: tuple[Pushes, str]
) -> None:
    receiver, endpoint = pushes
    gmail = sandbox.gmail()
    await asyncio.to_thread(
        gmail.users().watch(userId="me", body={"topicName": DEFAULT_TOPIC}).execute
    )
    added = await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    await eventually(lambda: receiver.received)
    headers, body = receiver.received[0]
    assert set(body) == {"message", "subscription"}
    assert body["subscription"].startswith("projects/sandbox-project/subscriptions/")
    message = body["message"]
    assert message["messageId"] == message["message_id"]
    assert message["publishTime"].endswith("Z")
    data = json.loads(base64.b64decode(message["data"]))
    assert data == {"emailAddress": EMAIL, "historyId": int(added["history"][0]["id"])}
    scheme, token = headers["authorization"].split(" ")
    assert scheme == "Bearer"
    register_secret(token)
    claims = await asyncio.to_thread(verify_with_google_auth, token, endpoint, sandbox.url)
    assert claims["email"] == DEFAULT_SERVICE_ACCOUNT
    assert claims["email_verified"] is True
    assert claims["iss"] == sandbox.url
    assert claims["exp"] - claims["iat"] == 3600
    assert sandbox.state.pubsub.counters["delivered"] == 1


async def test_one_notification_a_second_per_user_and_tokens_reused(
    sandbox: Sandbox, pushes: tuple[Pushes, str]
) -> None:
    receiver, _ = pushes
    gmail = sandbox.gmail()
    await asyncio.to_thread(
        gmail.users().watch(userId="me", body={"topicName": DEFAULT_TOPIC}).execute
    )
    for _ in range(3):
        await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    await eventually(lambda: sandbox.state.pubsub.counters["delivered"] == 1)
    outcomes = [n["outcome"] for n in await sandbox.control("GET", "/pubsub/notifications")]
    assert outcomes == ["delivered", "rate_limited", "rate_limited"]
    pubsub = sandbox.state.pubsub
    pubsub._last_published.clear()  # a second later
    await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    await eventually(lambda: len(receiver.received) == 2)
    # Pub/Sub reuses a token for a while: both pushes carry the same one.
    assert receiver.received[0][0]["authorization"] == receiver.received[1][0]["authorization"]


async def test_drops_delay_and_retries_as_configured(
    sandbox: Sandbox, pushes: tuple[Pushes, str]
) -> None:
    receiver, _ = pushes
    pubsub = sandbox.state.pubsub
    gmail = sandbox.gmail()
    await asyncio.to_thread(
        gmail.users().watch(userId="me", body={"topicName": DEFAULT_TOPIC}).execute
    )
    await sandbox.control("PUT", "/pubsub", json={"drop_rate": 1.0})
    await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    assert pubsub.counters["dropped"] == 1

    pubsub._last_published.clear()
    await sandbox.control("PUT", "/pubsub", json={"drop_rate": 0.0, "delay_seconds": 0.3})
    receiver.status = 503  # refused once: Pub/Sub retries
    await sandbox.control("POST", f"/users/{EMAIL}/mailbox/messages", json={})
    await eventually(lambda: receiver.received)
    receiver.status = 204
    await eventually(lambda: pubsub.counters["delivered"] == 1, within=10)
    (notification,) = [n for n in pubsub.log if n.outcome == "delivered"]
    assert notification.attempts == 2
    assert notification.delivered_at is not None
    assert notification.delivered_at - notification.published_at >= 0.3


async def test_deliveries_to_order_for_tests_of_a_push_endpoint(
    sandbox: Sandbox, pushes: tuple[Pushes, str]
) -> None:
    from google.auth.exceptions import GoogleAuthError

    receiver, endpoint = pushes
    made = await sandbox.control(
        "POST", "/pubsub/deliveries",
        json={"email": EMAIL, "signed_by": "stranger", "issued_seconds_ago": 7200},
    )  # fmt: skip
    assert made["status"] == 204
    token = receiver.received[0][0]["authorization"].split(" ")[1]
    register_secret(token)
    with pytest.raises((GoogleAuthError, ValueError)):
        await asyncio.to_thread(verify_with_google_auth, token, endpoint, sandbox.url)
    replayed = await sandbox.control(
        "POST", f"/pubsub/notifications/{made['message_id']}/redeliver"
    )
    assert replayed["status"] == 204
    # A replay: the same body and the same token again.
    assert receiver.received[1][1] == receiver.received[0][1]
    assert receiver.received[1][0]["authorization"] == receiver.received[0][0]["authorization"]
    fresh = await sandbox.control(
        "POST",
        f"/pubsub/notifications/{made['message_id']}/redeliver",
        params={"fresh_token": True},
    )
    assert fresh["status"] == 204
    assert receiver.received[2][1] == receiver.received[0][1]
    assert receiver.received[2][0]["authorization"] != receiver.received[0][0]["authorization"]
    register_secret(receiver.received[2][0]["authorization"].split(" ")[1])


async def test_the_generator_changes_mailboxes_steadily(sandbox: Sandbox) -> None:
    sandbox.state.add_user("bob@example.com", mailbox_size=10)
    await sandbox.control(
        "POST", "/generator",
        json={"changes_per_second": 200, "seconds": 0.5, "emails": [EMAIL, "bob@example.com"]},
    )  # fmt: skip
    report = await eventually(lambda: _finished(sandbox), within=10)
    changes = await sandbox.control("GET", "/generator/changes")
    assert len(changes) == report["changes"] > 20
    assert {c["email"] for c in changes} == {EMAIL, "bob@example.com"}
    assert {c["kind"] for c in changes} == {"add", "relabel", "delete"}
    for change in changes:
        records = sandbox.state.users[change["email"]].history.history()
        assert any(str(r.id) == change["history_id"] for r in records)


async def _finished(sandbox: Sandbox) -> dict[str, Any] | None:
    report: dict[str, Any] = await sandbox.control("GET", "/generator")
    return None if report["running"] else report
