"""The broker's answers as typed, immutable values. An access token never shows in a repr.

Messages with details are Gmail's own message resources, handed on unchanged: plain
dicts (`GmailMessage`), read as Gmail documents them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from token_broker_client._errors import UnexpectedResponse

# Gmail's message formats (`users.messages.get`): labels and snippet; headers; the parsed
# MIME tree; the whole RFC 822 message, base64url.
MessageFormat = Literal["minimal", "metadata", "full", "raw"]
# Gmail's history record types, to narrow a changes request.
HistoryType = Literal["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
# One Gmail message resource (`id`, `threadId`, `labelIds`, `snippet`, `payload`, `raw`, ...).
GmailMessage = dict[str, Any]


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


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise UnexpectedResponse(f"expected a list in {key!r}", status=200)
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
    """A connected Google account. It never carries a token.

    `status` is `active`, `revoked` (the grant ended: the user must connect again) or
    `suspended` (Google disabled the Google account); `status_reason` says why (the
    broker README's "Grant health": `revoked_by_user`, `expired_testing`, ...; on an
    active account only `session_policy`), `status_detail` what Google answered and what
    the broker knew, `status_changed_at` when either last changed. `scopes` are those
    Google granted, in Google's spelling; `granted_at` is the last consent, and
    `grant_expires_at` when the grant ends, when that is known (an app in testing
    status, time-based access). Fields a broker does not send are None.
    """

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
    email_verified: bool = False
    status_reason: str | None = None
    status_detail: str | None = None
    status_changed_at: datetime | None = None
    granted_at: datetime | None = None
    grant_expires_at: datetime | None = None

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
            email_verified=body.get("email_verified") is True,
            status_reason=_optional_str(body, "status_reason"),
            status_detail=_optional_str(body, "status_detail"),
            status_changed_at=_optional_time(body, "status_changed_at"),
            granted_at=_optional_time(body, "granted_at"),
            grant_expires_at=_optional_time(body, "grant_expires_at"),
        )


@dataclass(frozen=True)
class AccountPage:
    items: tuple[Account, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, value: Any) -> AccountPage:
        body = _object(value, "a page of accounts")
        return cls(
            items=tuple(Account.from_json(item) for item in _list(body, "items")),
            next_cursor=_optional_str(body, "next_cursor"),
        )


@dataclass(frozen=True)
class Authorization:
    """A started connect flow: keep `id` (in the user's session), then send the user's
    browser to `authorization_url`; `get_authorization(id)` tells what it produced."""

    id: str
    authorization_url: str
    state: str = field(repr=False)
    expires_at: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> Authorization:
        body = _object(value, "an authorization")
        return cls(
            id=_str(body, "id"),
            authorization_url=_str(body, "authorization_url"),
            state=_str(body, "state"),
            expires_at=_time(body, "expires_at"),
            raw=body,
        )


@dataclass(frozen=True)
class ConnectedAccount:
    """The account a connect flow connected. Keep `subject`: an email can change hands."""

    id: str
    subject: str
    email: str | None

    @classmethod
    def from_json(cls, value: Any) -> ConnectedAccount:
        body = _object(value, "a connected account")
        return cls(
            id=_str(body, "id"), subject=_str(body, "subject"), email=_optional_str(body, "email")
        )


@dataclass(frozen=True)
class AuthorizationFailure:
    """Why a connect flow failed: `code` is a problem code (`problem_class(code)` is its
    exception class), e.g. `access_denied` or `account_mismatch`."""

    code: str
    detail: str

    @classmethod
    def from_json(cls, value: Any) -> AuthorizationFailure:
        body = _object(value, "an authorization error")
        return cls(code=_str(body, "code"), detail=_optional_str(body, "detail") or "")


@dataclass(frozen=True)
class AuthorizationOutcome:
    """What a connect flow produced, as only the API client that started it can read it.

    `status` is `pending` (the user has not come back yet), `connected` (`account` is
    set, and only then), `failed` (`error` says why) or `expired` (the flow lapsed unused).
    """

    id: str
    status: str
    account: ConnectedAccount | None
    error: AuthorizationFailure | None
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> AuthorizationOutcome:
        body = _object(value, "an authorization outcome")
        account = body.get("account")
        error = body.get("error")
        return cls(
            id=_str(body, "id"),
            status=_str(body, "status"),
            account=None if account is None else ConnectedAccount.from_json(account),
            error=None if error is None else AuthorizationFailure.from_json(error),
            created_at=_time(body, "created_at"),
            expires_at=_time(body, "expires_at"),
            completed_at=_optional_time(body, "completed_at"),
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
        return cls(
            messages=tuple(MessageRef.from_json(item) for item in _list(body, "messages")),
            summary=ListingSummary.from_json(body),
        )


@dataclass(frozen=True, slots=True)
class NotFetched:
    """A listed message whose details Gmail would not give: `status` 404 (`notFound`) when
    it was deleted between the listing and the fetch, else Gmail's status and reason."""

    id: str
    thread_id: str
    status: int
    reason: str

    @classmethod
    def from_json(cls, value: Any) -> NotFetched:
        body = _object(value, "a message not fetched")
        return cls(
            id=_str(body, "id"),
            thread_id=_optional_str(body, "threadId") or "",
            status=_int(body, "status"),
            reason=_optional_str(body, "reason") or "",
        )


@dataclass(frozen=True)
class DetailsSummary(ListingSummary):
    """How a complete listing with details ended: `count` messages listed, `fetched` of them
    with details (one per item), `batches` Gmail batch requests, and the ones Gmail would
    not give (`not_fetched`: the first 10,000; `not_fetched_count`: all of them)."""

    fetched: int
    batches: int
    not_fetched_count: int
    not_fetched: tuple[NotFetched, ...]

    @classmethod
    def from_json(cls, value: Any) -> DetailsSummary:
        body = _object(value, "a listing summary")
        listing = ListingSummary.from_json(body)
        return cls(
            count=listing.count,
            pages=listing.pages,
            result_size_estimate=listing.result_size_estimate,
            fetched=_int(body, "fetched"),
            batches=_int(body, "batches"),
            not_fetched_count=_int(body, "not_fetched_count"),
            not_fetched=tuple(NotFetched.from_json(item) for item in _list(body, "not_fetched")),
        )


def gmail_message(value: Any) -> GmailMessage:
    """One Gmail message resource, as Gmail gave it (checked only to be one)."""
    body = _object(value, "a Gmail message")
    _str(body, "id")
    return body


@dataclass(frozen=True)
class MessageDetailsList:
    """A whole listing with each message's details (Gmail's resources), in listing order."""

    messages: tuple[GmailMessage, ...] = field(repr=False)
    summary: DetailsSummary

    @property
    def count(self) -> int:
        return self.summary.count

    @classmethod
    def from_json(cls, value: Any) -> MessageDetailsList:
        body = _object(value, "a message listing with details")
        return cls(
            messages=tuple(gmail_message(item) for item in _list(body, "messages")),
            summary=DetailsSummary.from_json(body),
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One change to a mailbox, from Gmail's history, in history order.

    `type` is `message_added`, `message_deleted` (deleted for good; trashing is
    `labels_added` `TRASH`), `labels_added` or `labels_removed`. `label_ids` are the labels
    added or removed, or for the others the message's labels as Gmail gave them.
    """

    type: str
    history_id: str
    message_id: str
    thread_id: str
    label_ids: tuple[str, ...]

    @classmethod
    def from_json(cls, value: Any) -> Change:
        body = _object(value, "a change")
        return cls(
            type=_str(body, "type"),
            history_id=_str(body, "history_id"),
            message_id=_str(body, "message_id"),
            thread_id=_str(body, "thread_id"),
            label_ids=_strings(body, "label_ids"),
        )


@dataclass(frozen=True)
class ChangesSummary:
    """How a complete changes answer ended: `count` changes from `pages` Gmail history pages,
    and `cursor`, where the next request continues (at Gmail history id `history_id`)."""

    count: int
    pages: int
    cursor: str
    history_id: str

    @classmethod
    def from_json(cls, value: Any) -> ChangesSummary:
        body = _object(value, "a changes summary")
        return cls(
            count=_int(body, "count"),
            pages=_int(body, "pages"),
            cursor=_str(body, "cursor"),
            history_id=_str(body, "history_id"),
        )


@dataclass(frozen=True)
class ChangeList:
    """Every change since a cursor in one answer, and the cursor to continue from."""

    changes: tuple[Change, ...]
    summary: ChangesSummary

    @property
    def cursor(self) -> str:
        return self.summary.cursor

    @property
    def count(self) -> int:
        return self.summary.count

    @classmethod
    def from_json(cls, value: Any) -> ChangeList:
        body = _object(value, "a list of changes")
        return cls(
            changes=tuple(Change.from_json(item) for item in _list(body, "changes")),
            summary=ChangesSummary.from_json(body),
        )
