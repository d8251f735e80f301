"""Mailbox changes end to end against the sandbox: what the broker answers equals what Google's
own client library reads from `users.history.list`, page after page, cursor after cursor.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from google_sandbox.quota import QuotaSettings
from tests.support.flow import Live

ALICE = "alice@example.com"
NDJSON = {"Accept": "application/x-ndjson"}


@pytest.fixture
def live_settings() -> dict[str, Any]:
    return {"gmail_backoff_seconds": 0.05, "gmail_attempts": 3}


async def connect(live: Live, email: str = ALICE) -> None:
    live.provider.state.add_user(email, mailbox_size=30)
    assert (await live.connect(email)).status_code == 200


def client_library_changes(live: Live, start: str, **filters: Any) -> list[dict[str, Any]]:
    """history.list as google-api-python-client reads it, mapped to the broker's change list."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    state = live.provider.state
    grant = state.new_grant(ALICE, "reference", {"https://www.googleapis.com/auth/gmail.readonly"})
    token, _ = state.issue_access_token(grant)
    gmail = build(
        "gmail", "v1", credentials=Credentials(token), static_discovery=True,
        cache_discovery=False, client_options={"api_endpoint": live.provider.url + "/"},
    )  # fmt: skip
    changes: list[dict[str, Any]] = []
    kinds = (("messagesAdded", "message_added"), ("messagesDeleted", "message_deleted"),
             ("labelsAdded", "labels_added"), ("labelsRemoved", "labels_removed"))  # fmt: skip
    request = gmail.users().history().list(userId="me", startHistoryId=start, **filters)
    while request is not None:
        page = request.execute()
        for record in page.get("history", []):
            for key, kind in kinds:
                for entry in record.get(key, []):
                    message = entry["message"]
                    labels = entry["labelIds"] if key.startswith("labels") else message["labelIds"]
                    changes.append({"type": kind, "history_id": record["id"],
                                    "message_id": message["id"],
                                    "thread_id": message["threadId"], "label_ids": labels})  # fmt: skip
        request = gmail.users().history().list_next(request, page)
    return changes


async def mutate(live: Live) -> None:
    """Add two messages (one a reply), relabel, trash, delete one for good."""
    control = f"{live.provider.url}/_sandbox/users/{ALICE}/mailbox/messages"
    first = (await live.browser.post(control, json={})).json()["message"]
    await live.browser.post(control, json={"threadId": first["threadId"], "labelIds": ["INBOX"]})
    await live.browser.post(
        f"{control}/{first['id']}/modify",
        json={"addLabelIds": ["STARRED", "IMPORTANT"], "removeLabelIds": ["UNREAD"]},
    )
    mailbox = live.provider.state.users[ALICE].mailbox
    await live.browser.post(f"{control}/{mailbox[5].id}/modify", json={"addLabelIds": ["TRASH"]})
    await live.browser.delete(f"{control}/{mailbox[7].id}")


async def test_changes_equal_what_the_client_library_reads(live: Live) -> None:
    await connect(live)
    headers = await live.headers()
    start = await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)
    assert start.status_code == 200, start.text
    assert start.json()["changes"] == []
    assert start.json()["count"] == 0
    await mutate(live)

    answer = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start.json()["cursor"]}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    reference = await asyncio.to_thread(client_library_changes, live, start.json()["history_id"])
    assert body["changes"] == reference
    assert [c["type"] for c in body["changes"]] == [
        "message_added", "message_added", "labels_added", "labels_removed", "labels_added",
        "message_deleted",
    ]  # fmt: skip
    assert body["history_id"] == live.provider.state.users[ALICE].history.current.__str__()

    # Nothing changed since: no changes, the same starting point.
    again = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": body["cursor"]}, headers=headers
    )
    assert again.json()["changes"] == []
    assert again.json()["history_id"] == body["history_id"]


async def test_ndjson_streams_each_change_then_the_cursor(live: Live) -> None:
    await connect(live)
    headers = await live.headers()
    start = (await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)).json()
    history = live.provider.state.users[ALICE].history
    for _ in range(620):  # more than one page of 500 records
        live.provider.state.pubsub.publish(ALICE, history.add())
    live.provider.state.calls.clear()
    streamed = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start["cursor"]},
        headers={**headers, **NDJSON},
    )  # fmt: skip
    assert streamed.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    *changes, final = lines
    assert len(changes) == 620
    assert all(change["type"] == "message_added" for change in changes)
    assert final["status"] == "complete"
    assert (final["count"], final["pages"]) == (620, 2)
    assert final["history_id"] == str(history.current)
    assert live.provider.state.calls["gmail.history.list"] == 2  # 500 a page
    following = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": final["cursor"]}, headers=headers
    )
    assert following.json()["changes"] == []


async def test_an_expired_cursor_is_410_and_its_fresh_cursor_works(live: Live) -> None:
    await connect(live)
    headers = await live.headers()
    start = (await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)).json()
    await mutate(live)
    await live.browser.post(f"{live.provider.url}/_sandbox/users/{ALICE}/mailbox/history/expire")
    expired = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start["cursor"]}, headers=headers
    )
    assert expired.status_code == 410
    problem = expired.json()
    assert problem["code"] == "cursor_expired"
    assert "list the mailbox again" in problem["detail"]
    # The caller lists the mailbox again, then carries on from the fresh cursor.
    listing = await live.broker.client.get(f"/v1/accounts/{ALICE}/messages", headers=headers)
    assert listing.status_code == 200
    added = await live.browser.post(
        f"{live.provider.url}/_sandbox/users/{ALICE}/mailbox/messages", json={}
    )
    resumed = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": problem["cursor"]}, headers=headers
    )
    assert resumed.status_code == 200
    assert [c["message_id"] for c in resumed.json()["changes"]] == [added.json()["message"]["id"]]


async def test_filters_pass_through_and_quota_is_gmails(live: Live) -> None:
    await connect(live)
    headers = await live.headers()
    start = (await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)).json()
    await mutate(live)
    quota = live.provider.state.quota
    quota.configure(QuotaSettings(units_per_minute=60_000))  # counts what each user spends
    spent_before = quota.spent[ALICE]
    only_added = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes",
        params=[("cursor", start["cursor"]), ("historyTypes", "messageAdded"),
                ("historyTypes", "messageDeleted"), ("labelId", "INBOX")],
        headers=headers,
    )  # fmt: skip
    assert quota.spent[ALICE] - spent_before == 2  # one history.list page
    reference = await asyncio.to_thread(
        client_library_changes, live, start["history_id"],
        historyTypes=["messageAdded", "messageDeleted"], labelId="INBOX",
    )  # fmt: skip
    assert only_added.json()["changes"] == reference
    assert {c["type"] for c in reference} == {"message_added", "message_deleted"}
    metrics = (await live.broker.client.get("/metrics")).text
    assert 'token_broker_gmail_quota_units_total{method="history.list"} 2.0' in metrics
    assert 'token_broker_gmail_quota_units_total{method="getProfile"} 1.0' in metrics

    unknown = await live.broker.client.get(
        f"/v1/accounts/{ALICE}/changes", params={"cursor": start["cursor"], "labelId": "Label_77"},
        headers=headers,
    )  # fmt: skip
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unknown_label"


async def test_a_cursor_works_only_for_its_account(live: Live) -> None:
    await connect(live)
    await connect(live, "bob@example.com")
    headers = await live.headers()
    alice = (await live.broker.client.get(f"/v1/accounts/{ALICE}/changes", headers=headers)).json()
    refused = await live.broker.client.get(
        "/v1/accounts/bob@example.com/changes", params={"cursor": alice["cursor"]}, headers=headers
    )
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_cursor"
