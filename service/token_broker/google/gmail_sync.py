"""Gmail's sync and push methods: `users.history.list`, `users.getProfile`, `users.watch`,
`users.stop`.

Google's facts behind this module (gmail.v1.json, shipped in google-api-python-client;
the sync guide https://developers.google.com/gmail/api/guides/sync; the push guide
https://developers.google.com/gmail/api/guides/push):

- history.list: `startHistoryId` (required), `labelId`, repeated `historyTypes`
  (messageAdded, messageDeleted, labelAdded, labelRemoved), `maxResults` (at most 500),
  `pageToken`; records in increasing id order, each with `messagesAdded`,
  `messagesDeleted`, `labelsAdded` or `labelsRemoved` entries (`{message: {id, threadId,
  labelIds}}`, the label changes with the `labelIds` changed); the answer's `historyId`
  is the mailbox's current one; an empty page has no `history`. A start id Gmail no
  longer knows answers 404: the client must list the mailbox again.
- getProfile: `{emailAddress, messagesTotal, threadsTotal, historyId}`.
- watch: POST `{topicName}` answers `{historyId, expiration}` (epoch milliseconds);
  stop answers with no body.
- Quota: history.list 2 units, getProfile 1 (google/gmail_details.py, QUOTA_UNITS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import SecretStr

from token_broker.google.gmail import (
    RATE_LIMIT_REASONS,
    GmailError,
    GmailUnauthorized,
    GmailUnknownLabel,
    error_reason,
)
from token_broker.google.transport import (
    Upstream,
    UpstreamProtocolError,
    json_object,
    parse_retry_after,
)
from token_broker.kit.retry import TransientError

MAX_PAGE_SIZE = 500
HistoryType = Literal["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
ChangeType = Literal["message_added", "message_deleted", "labels_added", "labels_removed"]
# Each record's entries, in the order the broker hands them on.
_ENTRIES: tuple[tuple[str, ChangeType], ...] = (
    ("messagesAdded", "message_added"),
    ("messagesDeleted", "message_deleted"),
    ("labelsAdded", "labels_added"),
    ("labelsRemoved", "labels_removed"),
)
_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_HISTORY_ID = re.compile(r"^[0-9]{1,20}$")
_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,225}$")
_INVALID_LABEL = re.compile(r"^Invalid label: (.+)$")


class GmailHistoryNotFound(Exception):
    """history.list answered 404: Gmail no longer has history from that start id."""


@dataclass(frozen=True, slots=True)
class HistoryChange:
    type: ChangeType
    history_id: str
    message_id: str
    thread_id: str
    label_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "history_id": self.history_id,
            "message_id": self.message_id,
            "thread_id": self.thread_id,
            "label_ids": list(self.label_ids),
        }


@dataclass(frozen=True, slots=True)
class HistoryPage:
    changes: list[HistoryChange]
    records: int
    next_page_token: str | None
    history_id: str  # the mailbox's current history id


@dataclass(frozen=True, slots=True)
class Profile:
    email: str
    history_id: str
    messages_total: int


@dataclass(frozen=True, slots=True)
class WatchAnswer:
    history_id: str
    expiration: datetime


def history_id_of(value: Any) -> str:
    """A history id as Gmail sends it (a uint64, in a string or a number), as a string."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UpstreamProtocolError("gmail: a history id that is not a number")
    text = str(value)
    if not _HISTORY_ID.match(text):
        raise UpstreamProtocolError("gmail: a history id that is not a number")
    return text


def _changes(record: Any) -> list[HistoryChange]:
    if not isinstance(record, dict):
        raise UpstreamProtocolError("gmail: a history record that is not an object")
    history_id = history_id_of(record.get("id"))
    changes = []
    for key, change_type in _ENTRIES:
        entries = record.get(key, [])
        if not isinstance(entries, list):
            raise UpstreamProtocolError(f"gmail: {key} is not a list")
        for entry in entries:
            message = entry.get("message") if isinstance(entry, dict) else None
            if not isinstance(message, dict):
                raise UpstreamProtocolError(f"gmail: an entry of {key} without a message")
            message_id, thread_id = message.get("id"), message.get("threadId", "")
            if not (isinstance(message_id, str) and _ID.match(message_id)):
                raise UpstreamProtocolError("gmail: a history message without a valid id")
            if not (isinstance(thread_id, str) and (thread_id == "" or _ID.match(thread_id))):
                raise UpstreamProtocolError("gmail: a history message without a valid threadId")
            labels = entry.get("labelIds") if key.startswith("labels") else message.get("labelIds")
            labels = labels or []
            if not isinstance(labels, list) or not all(
                isinstance(label, str) and _LABEL.match(label) for label in labels
            ):
                raise UpstreamProtocolError("gmail: label ids that are not strings")
            changes.append(
                HistoryChange(change_type, history_id, message_id, thread_id, tuple(labels))
            )
    return changes


class GmailSync:
    def __init__(self, upstream: Upstream, api_base: str) -> None:
        self.upstream = upstream
        self.api_base = api_base.rstrip("/")

    def _url(self, method: str) -> str:
        return f"{self.api_base}/gmail/v1/users/me/{method}"

    @staticmethod
    def _auth(access_token: SecretStr) -> dict[str, str]:
        return {"Authorization": f"Bearer {access_token.get_secret_value()}"}

    async def list_history(
        self,
        access_token: SecretStr,
        *,
        start_history_id: str,
        label_id: str | None = None,
        history_types: tuple[HistoryType, ...] = (),
        page_token: str | None = None,
        max_results: int = MAX_PAGE_SIZE,
    ) -> HistoryPage:
        params: list[tuple[str, str]] = [
            ("startHistoryId", start_history_id), ("maxResults", str(max_results)),
        ]  # fmt: skip
        if label_id:
            params.append(("labelId", label_id))
        params.extend(("historyTypes", kind) for kind in history_types)
        if page_token:
            params.append(("pageToken", page_token))
        response = await self.upstream.send(
            "gmail.history.list", "GET", self._url("history"),
            params=params, headers=self._auth(access_token),
        )  # fmt: skip
        if response.status_code == 404:
            raise GmailHistoryNotFound()
        body = self._answer(response, label_id)
        raw = body.get("history", [])
        if not isinstance(raw, list):
            raise UpstreamProtocolError("gmail: history is not a list")
        token = body.get("nextPageToken")
        return HistoryPage(
            changes=[change for record in raw for change in _changes(record)],
            records=len(raw),
            next_page_token=token if isinstance(token, str) and token else None,
            history_id=history_id_of(body.get("historyId")),
        )

    async def profile(self, access_token: SecretStr) -> Profile:
        response = await self.upstream.send(
            "gmail.getProfile", "GET", self._url("profile"), headers=self._auth(access_token)
        )
        body = self._answer(response)
        total = body.get("messagesTotal", 0)
        return Profile(
            email=str(body.get("emailAddress", "")),
            history_id=history_id_of(body.get("historyId")),
            messages_total=total if isinstance(total, int) else 0,
        )

    async def watch(self, access_token: SecretStr, *, topic: str) -> WatchAnswer:
        response = await self.upstream.send(
            "gmail.watch", "POST", self._url("watch"),
            json={"topicName": topic}, headers=self._auth(access_token),
        )  # fmt: skip
        body = self._answer(response)
        expiration = body.get("expiration")
        if isinstance(expiration, bool) or not isinstance(expiration, str | int):
            raise UpstreamProtocolError("gmail: a watch answer without an expiration")
        try:
            expires_at = datetime.fromtimestamp(int(expiration) / 1000, UTC)
        except (ValueError, OverflowError, OSError):
            raise UpstreamProtocolError("gmail: a watch expiration that is not a time") from None
        return WatchAnswer(history_id_of(body.get("historyId")), expires_at)

    async def stop(self, access_token: SecretStr) -> None:
        response = await self.upstream.send(
            "gmail.stop", "POST", self._url("stop"), headers=self._auth(access_token)
        )
        if response.status_code not in (200, 204):
            self._answer(response)

    @staticmethod
    def _answer(response: Any, label_id: str | None = None) -> dict[str, Any]:
        """The JSON body of a 200; any other answer raised as what it means."""
        if response.status_code == 200:
            return json_object(response)
        try:
            body = json_object(response)
        except UpstreamProtocolError:
            body = {}
        if response.status_code == 401:
            raise GmailUnauthorized()
        reason = error_reason(body)
        if response.status_code == 400 and label_id:
            error = body.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            match = _INVALID_LABEL.match(message) if isinstance(message, str) else None
            if match is not None and match.group(1) == label_id:
                raise GmailUnknownLabel(label_id)
        if response.status_code == 403 and reason in RATE_LIMIT_REASONS:
            raise TransientError(
                f"gmail: HTTP 403 {reason}",
                kind="rate_limited",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        raise GmailError(response.status_code, reason)
