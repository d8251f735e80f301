"""Message details, single messages and mailbox changes through the client, against a real
`token-broker dev` whose sandbox mailbox changes through its control API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.client.conftest import JSON_LISTING_MAX_MESSAGES, DevBroker
from token_broker_client import (
    BrokerClient,
    Change,
    CursorExpired,
    MessageNotFound,
    SyncBrokerClient,
    TooManyForJson,
)


def headers(message: dict[str, Any]) -> dict[str, str]:
    return {header["name"]: header["value"] for header in message["payload"]["headers"]}


async def test_a_listing_with_details_and_single_messages(dev_broker: DevBroker) -> None:
    dev_broker.connect("details@example.com", mailbox_size=80)
    async with BrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        ids = [m.id for m in (await broker.list_messages("details@example.com", limit=60)).messages]

        listing = await broker.list_message_details(
            "details@example.com", format="metadata", metadata_headers=["Subject"], limit=20
        )
        assert [message["id"] for message in listing.messages] == ids[:20]
        assert all(set(headers(message)) == {"Subject"} for message in listing.messages)
        assert listing.summary.fetched == listing.count == 20
        assert listing.summary.not_fetched == ()

        async with broker.stream_message_details(
            "details@example.com", format="minimal", limit=60
        ) as stream:
            streamed = [message async for message in stream]
        assert [message["id"] for message in streamed] == ids
        assert all("labelIds" in message and "payload" not in message for message in streamed)
        assert stream.summary is not None
        assert (stream.summary.count, stream.summary.fetched) == (60, 60)
        assert stream.summary.batches == 2  # Gmail batches of 50

        full = await broker.get_message("details@example.com", ids[0])
        assert full["id"] == ids[0]
        assert headers(full)["Subject"] == headers(listing.messages[0])["Subject"]
        raw = await broker.get_message("details@example.com", ids[0], format="raw")
        assert isinstance(raw["raw"], str)

        dev_broker.delete_message("details@example.com", ids[1])
        with pytest.raises(MessageNotFound) as gone:
            await broker.get_message("details@example.com", ids[1])
        assert gone.value.status == 404


def test_json_answers_past_their_cap_are_refused(dev_broker: DevBroker) -> None:
    dev_broker.connect("many@example.com", mailbox_size=JSON_LISTING_MAX_MESSAGES + 10)
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        # With details, before any detail is fetched (TOKEN_BROKER_GMAIL_DETAILS_JSON_MAX_MESSAGES).
        with pytest.raises(TooManyForJson) as details:
            broker.list_message_details("many@example.com", format="full", include_spam_trash=True)
        assert details.value.max_messages == 1_000
        assert details.value.status == 400
        # Ids only (TOKEN_BROKER_JSON_LISTING_MAX_MESSAGES); a stream has no cap.
        with pytest.raises(TooManyForJson) as ids:
            broker.list_messages("many@example.com", include_spam_trash=True)
        assert ids.value.max_messages == JSON_LISTING_MAX_MESSAGES
        streamed = broker.stream_messages("many@example.com", include_spam_trash=True).collect()
        assert len(streamed) == JSON_LISTING_MAX_MESSAGES + 10


async def test_changes_after_messages_arrive_and_change(dev_broker: DevBroker) -> None:
    dev_broker.connect("changes@example.com", mailbox_size=5)
    async with BrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        start = await broker.changes_cursor("changes@example.com")
        assert (await broker.list_changes("changes@example.com", start)).changes == ()

        arrived = dev_broker.add_message("changes@example.com", "Quarterly report")
        listed = await broker.list_changes("changes@example.com", start)
        assert [(c.type, c.message_id) for c in listed.changes] == [("message_added", arrived)]
        assert "INBOX" in listed.changes[0].label_ids
        message = await broker.get_message(
            "changes@example.com", arrived, format="metadata", metadata_headers=["Subject"]
        )
        assert headers(message) == {"Subject": "Quarterly report"}

        dev_broker.mark_read("changes@example.com", arrived)
        dev_broker.delete_message("changes@example.com", arrived)
        async with broker.stream_changes("changes@example.com", listed.cursor) as stream:
            later = [(c.type, c.message_id, c.label_ids) async for c in stream]
        assert later == [
            ("labels_removed", arrived, ("UNREAD",)),
            ("message_deleted", arrived, ("CATEGORY_PERSONAL", "INBOX")),  # the labels it had
        ]
        assert stream.summary is not None
        assert stream.summary.count == 2
        only_added = await broker.list_changes(
            "changes@example.com", start, history_types=["messageAdded"]
        )
        assert [c.type for c in only_added.changes] == ["message_added"]

        # Following the cursor from the start: every change, in order, and where to go on.
        seen: list[Change] = []

        async def apply(change: Change) -> None:
            seen.append(change)

        summary = await broker.follow_changes("changes@example.com", start, apply)
        assert [c.type for c in seen] == ["message_added", "labels_removed", "message_deleted"]
        assert summary.history_id == seen[-1].history_id
        assert (await broker.list_changes("changes@example.com", summary.cursor)).count == 0


async def test_an_expired_cursor_is_recovered_by_listing_again(dev_broker: DevBroker) -> None:
    dev_broker.connect("expiry@example.com", mailbox_size=5)
    async with BrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        old = await broker.changes_cursor("expiry@example.com")
        dev_broker.add_message("expiry@example.com", "Before the history was lost")
        dev_broker.expire_history("expiry@example.com")
        with pytest.raises(CursorExpired) as expired:
            await broker.list_changes("expiry@example.com", old)
        assert expired.value.status == 410
        assert expired.value.cursor is not None
        assert expired.value.history_id is not None
        assert (await broker.list_changes("expiry@example.com", expired.value.cursor)).count == 0

        # The recovery follow_changes runs: relist, then go on from the fresh cursor, so
        # what arrives while relisting comes as a change.
        mailbox: set[str] = set()
        during: list[str] = []

        async def relist(cursor: str) -> None:
            mailbox.clear()
            mailbox.update(
                m.id for m in (await broker.list_messages("expiry@example.com")).messages
            )
            during.append(dev_broker.add_message("expiry@example.com", "While relisting"))

        async def apply(change: Change) -> None:
            if change.type == "message_added":
                mailbox.add(change.message_id)

        summary = await broker.follow_changes("expiry@example.com", old, apply, on_relist=relist)
        assert summary.count == 1
        assert during[0] in mailbox
        everything = await broker.list_messages("expiry@example.com")
        assert mailbox == {m.id for m in everything.messages}
