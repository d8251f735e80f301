"""Each mailbox's history as Gmail keeps it: numbered records of every change, which expire.

Facts (the Gmail discovery document `gmail.v1.json`, shipped in google-api-python-client,
and the synchronization guide, https://developers.google.com/gmail/api/guides/sync):

- `users.history.list` returns "history records after the specified startHistoryId", "in
  chronological order (increasing historyId)". "History IDs increase chronologically but
  are not contiguous with random gaps in between valid IDs."
- "A historyId is typically valid for at least a week, but in some rare circumstances may
  be valid for only a few hours." "Supplying an invalid or out of date startHistoryId
  typically returns an HTTP 404 error code"; the client must then sync in full (sync
  guide, "Limitations").
- A `History` record has `id`, `messages` (every message it touched; "typically only id
  and threadId"), and one of `messagesAdded`, `messagesDeleted` ("deleted (not
  Trashed)"), `labelsAdded`, `labelsRemoved`: `[{message}]`, the label changes with the
  `labelIds` added or removed. The typed entries carry the message's `labelIds` too
  (pimalaya/himalaya#752: "the message's thread ID and label IDs ... are available in the
  underlying response").
- `historyTypes` (repeated: messageAdded, messageDeleted, labelAdded, labelRemoved) and
  `labelId` ("Only return messages with a label matching the ID") filter the records;
  `maxResults` defaults to 100, at most 500; the answer's `historyId` is "the ID of the
  mailbox's current history record", and no `nextPageToken` means nothing more.
- `users.getProfile`: `emailAddress`, `messagesTotal`, `threadsTotal`, `historyId`.

The seeded mailbox arrived long ago: its history has expired, so the first history id a
client can start from is the current one (from `getProfile`, `watch` or a message added
since). Every change made through the control API (`mailbox_control.py`) appends records.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from google_sandbox.mailbox import LABEL_IDS, Message

HistoryType = Literal["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
HISTORY_TYPES: tuple[HistoryType, ...] = (
    "messageAdded", "messageDeleted", "labelAdded", "labelRemoved",
)  # fmt: skip
_RECORD_KEY: dict[HistoryType, str] = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600  # "typically valid for at least a week"
# Above every seeded message's historyId (messages.py), so those are older than history.
FIRST_HISTORY_ID = 10_000_000
NEW_MESSAGE_ID_BASE = 0x1900_0000_0000_0000  # above every seeded message id
NEW_MESSAGE_LABELS = frozenset({"INBOX", "UNREAD", "CATEGORY_PERSONAL"})


class HistoryNotFound(Exception):
    """startHistoryId is older than the history kept, or not one this mailbox issued."""


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    id: int
    at: float
    kind: HistoryType
    message: Message  # after the change (before it, for a deletion)
    label_ids: tuple[str, ...] = ()  # the labels added or removed

    def touches(self, label_id: str) -> bool:
        return label_id in self.message.labels or label_id in self.label_ids

    def as_resource(self) -> dict[str, Any]:
        reference = {"id": self.message.id, "threadId": self.message.thread_id}
        entry: dict[str, Any] = {"message": {**reference, "labelIds": sorted(self.message.labels)}}
        if self.kind in ("labelAdded", "labelRemoved"):
            entry["labelIds"] = list(self.label_ids)
        return {"id": str(self.id), "messages": [reference], _RECORD_KEY[self.kind]: [entry]}


def _seed(email: str) -> int:
    return int.from_bytes(hashlib.sha256(b"history:" + email.encode()).digest()[:8], "big")


class MailboxHistory:
    """One mailbox's changes since it was seeded, and the history records they made."""

    def __init__(self, email: str, *, clock: Callable[[], float] = time.time) -> None:
        seed = _seed(email)
        self.email = email
        self.clock = clock
        self._rng = random.Random(seed)  # noqa: S311  (gaps between ids, not secrecy)
        self.current = FIRST_HISTORY_ID + seed % 90_000_000
        self.floor = self.current  # records after this one are kept
        self._ids: list[int] = []
        self._records: list[HistoryRecord] = []
        self._head = 0  # records before this index have expired
        self._new_ids = 0
        self._id_base = NEW_MESSAGE_ID_BASE + (seed % 0xFFFF) * 0x1_0000_0000
        self.added: dict[str, Message] = {}  # messages added since seeding, oldest first
        self.replaced: dict[str, Message] = {}  # seeded messages whose labels changed
        self.removed: set[str] = set()
        self.version = 0

    # ------------------------------------------------------------------ the mailbox

    def apply(self, seeded: list[Message]) -> list[Message]:
        """The mailbox now: messages added since (newest first), then the seeded ones."""
        added = [m for m in reversed(self.added.values()) if m.id not in self.removed]
        return added + [self.replaced.get(m.id, m) for m in seeded if m.id not in self.removed]

    # ------------------------------------------------------------------ changes

    def add(
        self,
        *,
        labels: Iterable[str] = NEW_MESSAGE_LABELS,
        thread_id: str | None = None,
        sender: str = "Sandbox Sender <sender@sandbox.example>",
        subject: str = "A new message",
        snippet: str = "a message added through the sandbox control API",
    ) -> HistoryRecord:
        self._new_ids += 1
        message_id = f"{self._id_base + self._new_ids * 0x10 + self._rng.randrange(16):016x}"
        record_id = self._next_id()
        message = Message(
            id=message_id,
            thread_id=thread_id or message_id,
            sender=sender,
            to=self.email,
            subject=subject,
            snippet=snippet,
            labels=frozenset(labels),
            internal_date=int(self.clock()),
            history_id=record_id,
        )
        self.added[message_id] = message
        return self._record(record_id, "messageAdded", message)

    def delete(self, message: Message) -> HistoryRecord:
        """Delete for good (Gmail's messages.delete, not trash: that is a label change)."""
        self.removed.add(message.id)
        return self._record(self._next_id(), "messageDeleted", message)

    def relabel(
        self, message: Message, add: Iterable[str], remove: Iterable[str]
    ) -> list[HistoryRecord]:
        """Gmail's messages.modify: one record for the labels added, one for those removed."""
        records = []
        added = tuple(sorted(set(add) - message.labels))
        removed = tuple(sorted((set(remove) & message.labels) - set(added)))
        for kind, labels in (("labelAdded", added), ("labelRemoved", removed)):
            if not labels:
                continue
            record_id = self._next_id()
            if kind == "labelAdded":
                changed = message.labels | set(labels)
            else:
                changed = message.labels - set(labels)
            message = replace(message, labels=changed, history_id=record_id)
            target = self.added if message.id in self.added else self.replaced
            target[message.id] = message
            records.append(self._record(record_id, kind, message, labels))  # type: ignore[arg-type]
        return records

    def _next_id(self) -> int:
        self.current += self._rng.randint(1, 20)
        return self.current

    def _record(
        self, record_id: int, kind: HistoryType, message: Message, labels: tuple[str, ...] = ()
    ) -> HistoryRecord:
        record = HistoryRecord(record_id, self.clock(), kind, message, labels)
        self._ids.append(record_id)
        self._records.append(record)
        self.version += 1
        return record

    # ------------------------------------------------------------------ expiry and reading

    def expire(self, retention_seconds: float) -> None:
        """Forget records older than `retention_seconds`."""
        cutoff = self.clock() - retention_seconds
        while self._head < len(self._records) and self._records[self._head].at < cutoff:
            self.floor = self._records[self._head].id
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(self._records):
            del self._ids[: self._head], self._records[: self._head]
            self._head = 0

    def expire_all(self) -> None:
        """Forget every record: no history id issued so far works any more (404)."""
        self.floor = self.current
        self._head = len(self._records)

    def records(
        self,
        start: int,
        *,
        after: int | None = None,
        label_id: str | None = None,
        types: frozenset[str] = frozenset(HISTORY_TYPES),
        limit: int,
    ) -> tuple[list[HistoryRecord], bool]:
        """Records after `start` (or after the page's `after`), filtered: (page, more)."""
        if start < self.floor or start > self.current:
            raise HistoryNotFound()
        position = bisect.bisect_right(self._ids, max(start, after or 0), lo=self._head)
        page: list[HistoryRecord] = []
        for record in self._records[position:]:
            if record.kind not in types or (label_id and not record.touches(label_id)):
                continue
            if len(page) == limit:
                return page, True
            page.append(record)
        return page, False

    def history(self) -> list[HistoryRecord]:
        """Every record still kept, oldest first."""
        return self._records[self._head :]


def check_labels(label_ids: Iterable[str]) -> list[str]:
    """The label ids this mailbox does not have."""
    return [label for label in label_ids if label not in LABEL_IDS]
