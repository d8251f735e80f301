"""A seeded, deterministic mailbox with Gmail's search operators and page tokens.

The same email address and size always give the same messages, newest first,
spread over threads and labels, so tests and benchmarks can count on exact ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

NEWEST = int(datetime(2026, 11, 1, 9, 0, tzinfo=UTC).timestamp())

SYSTEM_LABELS = (
    "INBOX", "UNREAD", "IMPORTANT", "STARRED", "SENT", "SPAM", "TRASH",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)  # fmt: skip
USER_LABELS = {"Label_1": "Receipts", "Label_2": "Travel", "Label_3": "Work/Projects"}
# Every label id a mailbox has: its system labels (DRAFT and CHAT carry no seeded message)
# and its user labels.
LABEL_IDS = frozenset({*SYSTEM_LABELS, "DRAFT", "CHAT", *USER_LABELS})
_CATEGORIES = SYSTEM_LABELS[7:]
_SENDERS = (
    ("Ada Lovelace", "ada@analytical.example"),
    ("Grace Hopper", "grace@navy.example"),
    ("Alan Turing", "alan@bletchley.example"),
    ("Katherine Johnson", "katherine@nasa.example"),
    ("Billing", "billing@shop.example"),
    ("Travel Desk", "trips@travel.example"),
    ("GitHub", "notifications@github.example"),
    ("Calendar", "calendar-noreply@google.example"),
    ("Newsletter", "news@weekly.example"),
    ("Support", "support@helpdesk.example"),
)
_SUBJECT_START = (
    "Invoice", "Meeting notes", "Trip itinerary", "Weekly digest", "Re: project plan",
    "Your receipt", "Quarterly report", "Lunch on Friday", "Build failed", "Welcome aboard",
    "Reminder", "Security alert", "Flight confirmation", "Draft proposal", "Team offsite",
)  # fmt: skip
_SUBJECT_END = (
    "for November", "Q3", "— action needed", "(updated)", "#4521", "and next steps",
    "from Lisbon", "2026", "for review", "tomorrow",
)  # fmt: skip
_SNIPPET_WORDS = (
    "please", "review", "attached", "schedule", "budget", "deadline", "thanks", "agenda",
    "confirm", "payment", "ticket", "release", "roadmap", "feedback", "hotel", "dinner",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    thread_id: str
    sender: str
    to: str
    subject: str
    snippet: str
    labels: frozenset[str]
    internal_date: int
    history_id: int | None = None  # the last history record that changed it (history.py)

    def as_list_entry(self) -> dict[str, str]:
        return {"id": self.id, "threadId": self.thread_id}


def _seed(email: str) -> int:
    return int.from_bytes(hashlib.sha256(email.lower().encode()).digest()[:8], "big")


def generate_mailbox(email: str, size: int) -> list[Message]:
    """`size` messages for `email`, newest first."""
    seed = _seed(email)
    rng = random.Random(seed)  # noqa: S311  (test data, not secrecy)
    id_base = 0x18C0_0000_0000_0000 + (seed % 0xFFFF) * 0x1_0000_0000
    oldest_first: list[Message] = []
    recent_threads: list[str] = []
    when = NEWEST - size * 1800
    for position in range(size):
        when += rng.randint(60, 3540)
        message_id = f"{id_base + position * 0x1000 + rng.randint(0, 0xFFF):016x}"
        if recent_threads and rng.random() < 0.35:
            thread_id = rng.choice(recent_threads)
        else:
            thread_id = message_id
            recent_threads = [*recent_threads[-9:], thread_id]
        labels = _labels(rng)
        name, address = _SENDERS[rng.randrange(len(_SENDERS))]
        sender, to = f"{name} <{address}>", email
        if "SENT" in labels:
            sender, to = email, f"{name} <{address}>"
        subject = f"{rng.choice(_SUBJECT_START)} {rng.choice(_SUBJECT_END)}"
        snippet = " ".join(rng.choice(_SNIPPET_WORDS) for _ in range(6))
        oldest_first.append(
            Message(message_id, thread_id, sender, to, subject, snippet, labels, when)
        )
    oldest_first.reverse()
    return oldest_first


def _labels(rng: random.Random) -> frozenset[str]:
    roll = rng.random()
    labels: set[str] = set()
    if roll < 0.02:
        labels.add("SPAM")
    elif roll < 0.04:
        labels.add("TRASH")
    elif roll < 0.14:
        labels.add("SENT")
    elif roll < 0.90:
        labels.add("INBOX")
    if "SENT" not in labels:
        labels.add(rng.choice(_CATEGORIES))
        if rng.random() < 0.30:
            labels.add("UNREAD")
    if rng.random() < 0.20:
        labels.add("IMPORTANT")
    if rng.random() < 0.05:
        labels.add("STARRED")
    for label_id in USER_LABELS:
        if rng.random() < 0.10:
            labels.add(label_id)
    return frozenset(labels)


# --------------------------------------------------------------------------- search

_TERM = re.compile(r'(-?)(?:([a-zA-Z_]+):)?("[^"]*"|\S+)')
Predicate = Callable[[Message], bool]


def _label_ids_named(name: str) -> set[str]:
    wanted = name.lower().replace("-", "/").replace(" ", "/")
    found = {label for label in SYSTEM_LABELS if label.lower() == wanted}
    found |= {
        label_id
        for label_id, label_name in USER_LABELS.items()
        if label_name.lower().replace(" ", "/") == wanted or label_id.lower() == wanted
    }
    return found


def _date_bound(value: str) -> int | None:
    if value.isdigit():
        return int(value)
    try:
        return int(
            datetime.strptime(value.replace("-", "/"), "%Y/%m/%d").replace(tzinfo=UTC).timestamp()
        )
    except ValueError:
        return None


def _term(operator: str | None, value: str) -> Predicate:
    text = value.lower()
    match operator.lower() if operator else None:
        case "from":
            return lambda m: text in m.sender.lower()
        case "to":
            return lambda m: text in m.to.lower()
        case "subject":
            return lambda m: text in m.subject.lower()
        case "is":
            flag = {"unread": "UNREAD", "starred": "STARRED", "important": "IMPORTANT"}.get(text)
            if text == "read":
                return lambda m: "UNREAD" not in m.labels
            return (lambda m: flag in m.labels) if flag else (lambda m: False)
        case "label" | "in":
            if text == "anywhere":
                return lambda m: True
            ids = _label_ids_named(text)
            return lambda m: bool(ids & m.labels)
        case "after" | "before" as bound:
            limit = _date_bound(value)
            if limit is None:
                return lambda m: False
            if bound == "after":
                return lambda m: m.internal_date >= limit
            return lambda m: m.internal_date < limit
        case _:
            word = f"{operator}:{value}".lower() if operator else text
            return lambda m: (
                word in m.subject.lower() or word in m.sender.lower() or word in m.snippet
            )


def _negated(predicate: Predicate) -> Predicate:
    return lambda message: not predicate(message)


def compile_query(q: str | None, label_ids: list[str], include_spam_trash: bool) -> Predicate:
    """A predicate equivalent to Gmail's `q`, `labelIds` (all must match) and `includeSpamTrash`."""
    predicates: list[Predicate] = []
    mentions_spam_or_trash = any(label in ("SPAM", "TRASH") for label in label_ids)
    for negated, operator, raw in _TERM.findall(q or ""):
        value = raw.strip('"')
        if (
            not negated
            and operator.lower() in ("in", "label")
            and value.lower() in ("spam", "trash", "anywhere")
        ):
            mentions_spam_or_trash = True
        predicate = _term(operator or None, value)
        predicates.append(_negated(predicate) if negated else predicate)
    required = frozenset(label_ids)
    hide_spam_trash = not include_spam_trash and not mentions_spam_or_trash

    def matches(message: Message) -> bool:
        if hide_spam_trash and ("SPAM" in message.labels or "TRASH" in message.labels):
            return False
        if not required <= message.labels:
            return False
        return all(predicate(message) for predicate in predicates)

    return matches


# --------------------------------------------------------------------------- paging


class InvalidPageToken(Exception):
    pass


class PageTokens:
    """Opaque page tokens bound to one query; tampering or reuse on another query is refused."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, query_key: str, offset: int) -> str:
        payload = offset.to_bytes(4, "big") + hashlib.sha256(query_key.encode()).digest()[:8]
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()[:12]
        return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")

    def offset(self, query_key: str, token: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise InvalidPageToken() from None
        payload, mac = raw[:12], raw[12:]
        expected = hmac.new(self._secret, payload, hashlib.sha256).digest()[:12]
        if len(raw) != 24 or not hmac.compare_digest(mac, expected):
            raise InvalidPageToken()
        if payload[4:] != hashlib.sha256(query_key.encode()).digest()[:8]:
            raise InvalidPageToken()
        return int.from_bytes(payload[:4], "big")


class SearchCache:
    """Results of recent queries, so paging through 100,000 messages does not rescan them."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._results: OrderedDict[str, list[Message]] = OrderedDict()

    def get(self, key: str, compute: Callable[[], list[Message]]) -> list[Message]:
        if key in self._results:
            self._results.move_to_end(key)
            return self._results[key]
        result = compute()
        self._results[key] = result
        if len(self._results) > self.capacity:
            self._results.popitem(last=False)
        return result

    def clear(self) -> None:
        self._results.clear()
