"""The sandbox's messages.get, batch endpoint and per-user quota, as Gmail and its client see them.

Google's own client library (google-api-python-client) is the reference: what it
sends must be understood, and what the sandbox answers must parse in it.
"""

from __future__ import annotations

import asyncio
import base64
import email
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from typing import Any

import httpx
import pytest

from google_sandbox import SandboxState, create_sandbox_app
from google_sandbox.quota import QuotaSettings
from google_sandbox.records import FaultRule
from tests.support.hygiene import register_secret
from tests.support.servers import serve

EMAIL = "alice@example.com"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
METADATA = "https://www.googleapis.com/auth/gmail.metadata"


@dataclass
class Gmail:
    state: SandboxState
    url: str
    http: httpx.AsyncClient
    token: str

    def token_for(self, *scopes: str) -> str:
        grant = self.state.new_grant(EMAIL, "details-client", {"openid", *scopes})
        return register_secret(self.state.issue_access_token(grant)[0])

    async def get(self, message_id: str, token: str | None = None, **params: Any) -> httpx.Response:
        return await self.http.get(
            f"{self.url}/gmail/v1/users/me/messages/{message_id}",
            params=params,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    def ids(self, count: int) -> list[str]:
        return [m.id for m in self.state.users[EMAIL].mailbox[:count]]

    def client(self) -> Any:
        from google.oauth2.credentials import Credentials
        from googleapiclient.discovery import build

        return build(
            "gmail", "v1", credentials=Credentials(self.token), static_discovery=True,
            cache_discovery=False, client_options={"api_endpoint": self.url + "/"},
        )  # fmt: skip


@pytest.fixture
async def gmail() -> AsyncIterator[Gmail]:
    state = SandboxState(default_mailbox_size=300)
    state.add_user(EMAIL)
    async with serve(create_sandbox_app(state)) as url, httpx.AsyncClient() as http:
        grant = state.new_grant(EMAIL, "details-client", {"openid", READONLY})
        token = register_secret(state.issue_access_token(grant)[0])
        yield Gmail(state, url, http, token)


def batch_body(boundary: str, paths: list[str], token: str | None = None) -> bytes:
    parts = []
    for index, path in enumerate(paths):
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        parts.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item{index}>\r\n\r\n"
            f"GET {path} HTTP/1.1\r\n{auth}\r\n"
        )
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def parse_batch_answer(response: httpx.Response) -> list[tuple[str, int, dict[str, Any]]]:
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n"
    envelope = email.message_from_bytes(raw + response.content, policy=policy.compat32)
    answers = []
    for part in envelope.get_payload():
        payload = part.get_payload()
        status_line, rest = payload.split("\r\n", 1)
        body = rest.split("\r\n\r\n", 1)[1]
        answers.append((part["Content-ID"], int(status_line.split(" ")[1]), json.loads(body)))
    return answers


# --------------------------------------------------------------------------- messages.get


async def test_minimal_and_metadata_formats(gmail: Gmail) -> None:
    message = gmail.state.users[EMAIL].mailbox[3]
    minimal = (await gmail.get(message.id, format="minimal")).json()
    assert list(minimal) == [
        "id", "threadId", "labelIds", "snippet", "sizeEstimate", "historyId", "internalDate",
    ]  # fmt: skip
    assert minimal["id"] == message.id
    assert minimal["threadId"] == message.thread_id
    assert minimal["labelIds"] == sorted(message.labels)
    assert minimal["internalDate"] == str(message.internal_date * 1000)

    metadata = (
        await gmail.get(message.id, format="metadata", metadataHeaders=["subject", "FROM"])
    ).json()
    assert metadata["payload"]["headers"] == [
        {"name": "Subject", "value": message.subject},
        {"name": "From", "value": message.sender},
    ]
    everything = (await gmail.get(message.id, format="metadata")).json()
    names = [h["name"] for h in everything["payload"]["headers"]]
    assert {"Date", "Message-ID", "To", "Delivered-To", "MIME-Version"} <= set(names)
    assert "parts" not in everything["payload"]
    assert everything["sizeEstimate"] == minimal["sizeEstimate"]


async def test_raw_is_the_rfc822_message_and_full_is_its_parsed_tree(gmail: Gmail) -> None:
    for message in gmail.state.users[EMAIL].mailbox[:40]:
        raw = (await gmail.get(message.id, format="raw")).json()
        assert "payload" not in raw
        rfc822 = base64.urlsafe_b64decode(raw["raw"])
        assert raw["sizeEstimate"] == len(rfc822)
        parsed = email.message_from_bytes(rfc822, policy=policy.default)
        assert parsed["Subject"] == message.subject
        full = (await gmail.get(message.id)).json()  # format=full is the default
        payload = full["payload"]
        assert payload["partId"] == ""
        assert payload["mimeType"] == parsed.get_content_type()
        text = parsed.get_body(("plain",))
        assert text is not None
        leaves = _leaves(payload)
        plain = next(p for p in leaves if p["mimeType"] == "text/plain")
        assert base64.urlsafe_b64decode(plain["body"]["data"]).decode() == text.get_content()
        attachments = [p for p in leaves if p["filename"]]
        assert [a.get_filename() for a in parsed.iter_attachments()] == [
            a["filename"] for a in attachments
        ]
        for attachment in attachments:
            assert set(attachment["body"]) == {"attachmentId", "size"}


def _leaves(part: dict[str, Any]) -> list[dict[str, Any]]:
    if "parts" not in part:
        return [part]
    return [leaf for child in part["parts"] for leaf in _leaves(child)]


async def test_get_errors_are_gmails(gmail: Gmail) -> None:
    missing = await gmail.get("ffffffffffffffff")
    assert missing.status_code == 404
    assert missing.json()["error"]["errors"][0]["reason"] == "notFound"
    message_id = gmail.ids(1)[0]
    assert (await gmail.get(message_id, format="fancy")).status_code == 400
    metadata_only = gmail.token_for(METADATA)
    refused = await gmail.get(message_id, token=metadata_only, format="full")
    assert refused.status_code == 403
    assert "Metadata scope" in refused.json()["error"]["message"]
    assert (await gmail.get(message_id, token=metadata_only, format="metadata")).status_code == 200
    assert (await gmail.get(message_id, token="ya29.not-a-token")).status_code == 401
    deleted = await gmail.http.post(
        f"{gmail.url}/_sandbox/users/{EMAIL}/messages/{message_id}/delete"
    )
    assert deleted.json() == {"deleted": True}
    assert (await gmail.get(message_id)).status_code == 404


# --------------------------------------------------------------------------- batch


async def test_googles_batch_client_gets_what_single_gets_get(gmail: Gmail) -> None:
    ids = gmail.ids(60)
    gmail.state.users[EMAIL].deleted.add(ids[7])

    def fetch() -> tuple[dict[str, Any], dict[str, int], list[dict[str, Any]]]:
        from googleapiclient.http import BatchHttpRequest

        service = gmail.client()
        got: dict[str, Any] = {}
        errors: dict[str, int] = {}

        def collect(request_id: str, response: Any, exception: Any) -> None:
            if exception is not None:
                errors[request_id] = exception.resp.status
            else:
                got[request_id] = response

        # The discovery document's batchPath is joined to Google's root URL, whatever the
        # api_endpoint: a client pointed elsewhere names the batch URI itself.
        batch = BatchHttpRequest(callback=collect, batch_uri=f"{gmail.url}/batch/gmail/v1")
        for message_id in ids[:50]:
            batch.add(
                service.users().messages().get(
                    userId="me", id=message_id, format="metadata",
                    metadataHeaders=["Subject", "From", "Date"],
                ),
                request_id=message_id,
            )  # fmt: skip
        batch.execute()
        singles = [
            service.users().messages().get(
                userId="me", id=message_id, format="metadata",
                metadataHeaders=["Subject", "From", "Date"],
            ).execute()
            for message_id in ids[:10]
            if message_id != ids[7]
        ]  # fmt: skip
        return got, errors, singles

    got, errors, singles = await asyncio.to_thread(fetch)
    assert errors == {ids[7]: 404}
    assert len(got) == 49
    assert len(singles) == 9
    for single in singles:
        assert got[single["id"]] == single
    assert gmail.state.calls["gmail.batch"] == 1
    assert gmail.state.calls["gmail.messages.get"] == 59


async def test_batch_wire_format(gmail: Gmail) -> None:
    ids = gmail.ids(3)
    paths = [f"/gmail/v1/users/me/messages/{i}?format=minimal" for i in ids]
    response = await gmail.http.post(
        f"{gmail.url}/batch/gmail/v1",
        content=batch_body("b0undary", paths),
        headers={"Content-Type": "multipart/mixed; boundary=b0undary",
                 "Authorization": f"Bearer {gmail.token}"},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=batch_")
    answers = parse_batch_answer(response)
    assert [(cid, status) for cid, status, _ in answers] == [
        ("<response-item0>", 200), ("<response-item1>", 200), ("<response-item2>", 200),
    ]  # fmt: skip
    assert [body["id"] for _, _, body in answers] == ids
    # A part's own Authorization wins over the outer request's.
    own = await gmail.http.post(
        f"{gmail.url}/batch/gmail/v1",
        content=batch_body("x", paths[:1], token="ya29.wrong"),
        headers={"Content-Type": "multipart/mixed; boundary=x",
                 "Authorization": f"Bearer {gmail.token}"},
    )  # fmt: skip
    assert parse_batch_answer(own)[0][1] == 401


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        (
            "multipart/mixed; boundary=x",
            b"--x\r\nContent-Type: application/http\r\n\r\nnonsense\r\n--x--",
        ),
        ("multipart/mixed; boundary=x", batch_body("x", ["/gmail/v1/users/me/messages/1"] * 101)),
    ],
)
async def test_malformed_or_oversized_batches_are_400(
    gmail: Gmail, content_type: str, body: bytes
) -> None:
    response = await gmail.http.post(
        f"{gmail.url}/batch/gmail/v1", content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {gmail.token}"},
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400


# --------------------------------------------------------------------------- quota


async def test_rate_limit_answers_as_gmail_does(gmail: Gmail) -> None:
    gmail.state.quota.configure(QuotaSettings(units_per_minute=60, burst_units=25))
    message_id = gmail.ids(1)[0]
    statuses = [(await gmail.get(message_id)).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    limited = await gmail.get(message_id)
    error = limited.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["errors"][0]["reason"] == "rateLimitExceeded"
    assert "Queries per minute per user" in error["message"]

    gmail.state.quota.configure(
        QuotaSettings(units_per_minute=60, burst_units=5, exceeded_status=403)
    )
    assert (await gmail.get(message_id)).status_code == 200
    refused = await gmail.get(message_id)
    assert refused.status_code == 403
    assert refused.json()["error"]["errors"][0] == {
        "message": "User Rate Limit Exceeded", "domain": "usageLimits",
        "reason": "userRateLimitExceeded",
    }  # fmt: skip
    report = (await gmail.http.get(f"{gmail.url}/_sandbox/quota")).json()
    assert report["rate_limited"] == 3
    assert report["spent"] == {EMAIL: 30}
    listing = await gmail.http.get(
        f"{gmail.url}/gmail/v1/users/me/messages",
        headers={"Authorization": f"Bearer {gmail.token}"},
    )
    assert listing.status_code == 403  # messages.list costs units too


async def test_each_batch_part_is_charged_and_limited_alone(gmail: Gmail) -> None:
    gmail.state.quota.configure(QuotaSettings(units_per_minute=60, burst_units=50))
    paths = [f"/gmail/v1/users/me/messages/{i}?format=minimal" for i in gmail.ids(12)]
    response = await gmail.http.post(
        f"{gmail.url}/batch/gmail/v1", content=batch_body("q", paths),
        headers={"Content-Type": "multipart/mixed; boundary=q",
                 "Authorization": f"Bearer {gmail.token}"},
    )  # fmt: skip
    statuses = [status for _, status, _ in parse_batch_answer(response)]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 2
    assert gmail.state.quota.report()["spent"] == {EMAIL: 50}


async def test_concurrent_requests_past_the_limit_are_429(gmail: Gmail) -> None:
    gmail.state.quota.configure(QuotaSettings(concurrent_limit=4))
    paths = [f"/gmail/v1/users/me/messages/{i}?format=minimal" for i in gmail.ids(6)]
    response = await gmail.http.post(
        f"{gmail.url}/batch/gmail/v1", content=batch_body("c", paths),
        headers={"Content-Type": "multipart/mixed; boundary=c",
                 "Authorization": f"Bearer {gmail.token}"},
    )  # fmt: skip
    answers = parse_batch_answer(response)
    assert [status for _, status, _ in answers] == [200] * 4 + [429] * 2
    assert answers[-1][2]["error"]["message"] == "Too many concurrent requests for user."

    # Plain calls in progress count too: hold four open with added latency.
    gmail.state.quota.configure(QuotaSettings(concurrent_limit=4))
    gmail.state.faults.append(FaultRule("gmail.messages.get", kind="latency", delay=0.3))
    results = await asyncio.gather(*(gmail.get(gmail.ids(1)[0]) for _ in range(6)))
    assert sorted(r.status_code for r in results) == [200] * 4 + [429] * 2
    assert gmail.state.quota.report()["peak_in_flight"] == {EMAIL: 4}
    assert gmail.state.quota.in_flight[EMAIL] == 0


async def test_any_gmail_call_can_be_batched(gmail: Gmail) -> None:
    paths = [
        "/gmail/v1/users/me/messages?maxResults=2",
        f"/gmail/v1/users/me/messages/{gmail.ids(1)[0]}",
    ]
    response = await gmail.http.post(
        f"{gmail.url}/batch/gmail/v1", content=batch_body("l", paths),
        headers={"Content-Type": "multipart/mixed; boundary=l",
                 "Authorization": f"Bearer {gmail.token}"},
    )  # fmt: skip
    (_, list_status, page), (_, get_status, message) = parse_batch_answer(response)
    assert (list_status, get_status) == (200, 200)
    assert [m["id"] for m in page["messages"]] == gmail.ids(2)
    assert "nextPageToken" in page
    assert message["payload"]["partId"] == ""  # format=full, Gmail's default
    assert gmail.state.calls["gmail.messages.list"] == 1
