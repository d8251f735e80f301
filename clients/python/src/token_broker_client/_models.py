"""The broker's answers as typed, immutable values. An access token never shows in a repr."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from token_broker_client._errors import UnexpectedResponse


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnexpectedResponse(f"expected {what} as a JSON object", status=200)
    return value


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise UnexpectedResponse(f"expected a string in {key!r}", status=200)
    return value


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) else None


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnexpectedResponse(f"expected an integer in {key!r}", status=200)
    return value


def _time(body: dict[str, Any], key: str) -> datetime:
    try:
        return datetime.fromisoformat(_str(body, key))
    except ValueError:
        raise UnexpectedResponse(f"expected an ISO 8601 time in {key!r}", status=200) from None


def _optional_time(body: dict[str, Any], key: str) -> datetime | None:
    return None if body.get(key) is None else _time(body, key)


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise UnexpectedResponse(f"expected a list in {key!r}", status=200)
    return tuple(item for item in value if isinstance(item, str))


@dataclass(frozen=True)
class AccessToken:
    """A Google access token for one account, as the broker handed it out."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime
    expires_in: int
    scopes: tuple[str, ...]

    @classmethod
    def from_json(cls, value: Any) -> AccessToken:
        body = _object(value, "an access token")
        return cls(
            access_token=_str(body, "access_token"),
            token_type=_str(body, "token_type"),
            expires_at=_time(body, "expires_at"),
            expires_in=_int(body, "expires_in"),
            scopes=_strings(body, "scopes"),
        )


@dataclass(frozen=True)
class Account:
    """A connected Google account. It never carries a token."""

    id: str
    subject: str
    email: str | None
    status: str
    scopes: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    last_refreshed_at: datetime | None
    access_token_expires_at: datetime | None
    # Everything the broker sent, including fields newer than this client.
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> Account:
        body = _object(value, "an account")
        return cls(
            id=_str(body, "id"),
            subject=_str(body, "subject"),
            email=_optional_str(body, "email"),
            status=_str(body, "status"),
            scopes=_strings(body, "scopes"),
            created_at=_time(body, "created_at"),
            updated_at=_time(body, "updated_at"),
            last_refreshed_at=_optional_time(body, "last_refreshed_at"),
            access_token_expires_at=_optional_time(body, "access_token_expires_at"),
            raw=body,
        )


@dataclass(frozen=True)
class AccountPage:
    items: tuple[Account, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, value: Any) -> AccountPage:
        body = _object(value, "a page of accounts")
        items = body.get("items")
        if not isinstance(items, list):
            raise UnexpectedResponse("expected a list in 'items'", status=200)
        return cls(
            items=tuple(Account.from_json(item) for item in items),
            next_cursor=_optional_str(body, "next_cursor"),
        )


@dataclass(frozen=True)
class Authorization:
    """A started connect flow: send the user's browser to `authorization_url`."""

    authorization_url: str
    state: str = field(repr=False)
    expires_at: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> Authorization:
        body = _object(value, "an authorization")
        return cls(
            authorization_url=_str(body, "authorization_url"),
            state=_str(body, "state"),
            expires_at=_time(body, "expires_at"),
            raw=body,
        )


@dataclass(frozen=True)
class Deletion:
    deleted: bool
    upstream_revoked: bool

    @classmethod
    def from_json(cls, value: Any) -> Deletion:
        body = _object(value, "a deletion")
        return cls(
            deleted=body.get("deleted") is True,
            upstream_revoked=body.get("upstream_revoked") is True,
        )


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One Gmail message of a listing: its id and its thread's id."""

    id: str
    thread_id: str

    @classmethod
    def from_json(cls, value: Any) -> MessageRef:
        body = _object(value, "a message")
        return cls(id=_str(body, "id"), thread_id=_str(body, "threadId"))


@dataclass(frozen=True)
class ListingSummary:
    """How a complete listing ended: messages sent, Gmail pages read, Gmail's estimate."""

    count: int
    pages: int
    result_size_estimate: int

    @classmethod
    def from_json(cls, value: Any) -> ListingSummary:
        body = _object(value, "a listing summary")
        return cls(
            count=_int(body, "count"),
            pages=_int(body, "pages"),
            result_size_estimate=_int(body, "result_size_estimate"),
        )


@dataclass(frozen=True)
class MessageList:
    """A whole listing in one answer (for big mailboxes, stream instead)."""

    messages: tuple[MessageRef, ...]
    summary: ListingSummary

    @property
    def count(self) -> int:
        return self.summary.count

    @classmethod
    def from_json(cls, value: Any) -> MessageList:
        body = _object(value, "a message listing")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise UnexpectedResponse("expected a list in 'messages'", status=200)
        return cls(
            messages=tuple(MessageRef.from_json(item) for item in messages),
            summary=ListingSummary.from_json(body),
        )
