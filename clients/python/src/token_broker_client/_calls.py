"""Every broker endpoint the client uses, described once for both clients.

A `Call` says what to send and how to read the answer; a `StreamCall` does the
same for an NDJSON stream (listings, listings with details, changes).
`BrokerClient` and `SyncBrokerClient` only send them, so a new endpoint is a
function here, its model, and one line in each client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from token_broker_client._models import (
    AccessToken,
    Account,
    AccountPage,
    Authorization,
    AuthorizationOutcome,
    Change,
    ChangeList,
    ChangesSummary,
    Deletion,
    DetailsSummary,
    GmailMessage,
    HistoryType,
    ListingSummary,
    MessageDetailsList,
    MessageFormat,
    MessageList,
    MessageRef,
    gmail_message,
)

T = TypeVar("T")
Item = TypeVar("Item")
Summary = TypeVar("Summary")
Params = list[tuple[str, str]]

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: Params = field(default_factory=list)
    json: dict[str, Any] | None = None
    # Whether sending it twice does no more than sending it once (retries depend on it).
    idempotent: bool = True


@dataclass(frozen=True)
class StreamCall(Generic[Item, Summary]):
    """An NDJSON stream: item lines, then one final `{"status": ...}` line."""

    path: str
    item: Callable[[Any], Item]
    summary: Callable[[Any], Summary]
    params: Params = field(default_factory=list)
    # The final line's field that counts the item lines (a listing with details counts
    # in `count` the messages listed, and in `fetched` those sent).
    counted: str = "count"


def account_path(account: str) -> str:
    """`/v1/accounts/<account>`: a subject id or an email address, escaped for a path."""
    if not account:
        raise ValueError("account must be a subject id or an email address")
    return "/v1/accounts/" + quote(account, safe="@")


def _segment(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    return quote(value, safe="")


def _each(values: Sequence[str], what: str) -> list[str]:
    # A lone string is a sequence too: "Subject" would be sent as seven headers.
    if isinstance(values, str):
        raise TypeError(f"{what} takes a list of strings, not a string")
    return list(values)


def access_token(
    account: str, *, min_ttl: int, force_refresh: bool, scopes: Sequence[str]
) -> Call[AccessToken]:
    params = [("min_ttl", str(min_ttl))]
    if force_refresh:
        params.append(("force_refresh", "true"))
    params.extend(("scope", scope) for scope in _each(scopes, "scopes"))
    return Call("GET", account_path(account) + "/access-token", AccessToken.from_json, params)


def message_params(
    q: str | None, label_ids: Sequence[str], include_spam_trash: bool, limit: int | None
) -> Params:
    params: Params = []
    if q is not None:
        params.append(("q", q))
    params.extend(("labelIds", label) for label in _each(label_ids, "label_ids"))
    if include_spam_trash:
        params.append(("includeSpamTrash", "true"))
    if limit is not None:
        params.append(("limit", str(limit)))
    return params


def list_messages(account: str, params: Params) -> Call[MessageList]:
    return Call("GET", account_path(account) + "/messages", MessageList.from_json, params)


def stream_messages(account: str, params: Params) -> StreamCall[MessageRef, ListingSummary]:
    return StreamCall(
        account_path(account) + "/messages", MessageRef.from_json, ListingSummary.from_json, params
    )


def details_params(
    listing: Params, message_format: MessageFormat, metadata_headers: Sequence[str]
) -> Params:
    headers = _each(metadata_headers, "metadata_headers")
    return [*listing, ("format", message_format), *(("metadataHeaders", h) for h in headers)]


def list_message_details(account: str, params: Params) -> Call[MessageDetailsList]:
    return Call("GET", account_path(account) + "/messages", MessageDetailsList.from_json, params)


def stream_message_details(
    account: str, params: Params
) -> StreamCall[GmailMessage, DetailsSummary]:
    return StreamCall(
        account_path(account) + "/messages", gmail_message, DetailsSummary.from_json, params,
        counted="fetched",
    )  # fmt: skip


def get_message(
    account: str, message_id: str, message_format: MessageFormat, metadata_headers: Sequence[str]
) -> Call[GmailMessage]:
    path = account_path(account) + "/messages/" + _segment(message_id, "message_id")
    return Call("GET", path, gmail_message, details_params([], message_format, metadata_headers))


def changes_params(
    cursor: str | None, label_id: str | None, history_types: Sequence[HistoryType]
) -> Params:
    params: Params = []
    if cursor is not None:
        params.append(("cursor", cursor))
    if label_id is not None:
        params.append(("labelId", label_id))
    params.extend(("historyTypes", kind) for kind in _each(history_types, "history_types"))
    return params


def list_changes(account: str, params: Params) -> Call[ChangeList]:
    return Call("GET", account_path(account) + "/changes", ChangeList.from_json, params)


def stream_changes(account: str, params: Params) -> StreamCall[Change, ChangesSummary]:
    return StreamCall(
        account_path(account) + "/changes", Change.from_json, ChangesSummary.from_json, params
    )


def get_account(account: str) -> Call[Account]:
    return Call("GET", account_path(account), Account.from_json)


def list_accounts(
    *,
    email: str | None,
    status: str | None,
    reason: str | None,
    cursor: str | None,
    limit: int | None,
) -> Call[AccountPage]:
    given = {"email": email, "status": status, "reason": reason, "cursor": cursor, "limit": limit}
    params = [(name, str(value)) for name, value in given.items() if value is not None]
    return Call("GET", "/v1/accounts", AccountPage.from_json, params)


def delete_account(account: str) -> Call[Deletion]:
    return Call("DELETE", account_path(account), Deletion.from_json)


def add_scopes(
    account: str, scopes: Sequence[str], *, return_to: str | None
) -> Call[Authorization]:
    wanted = _each(scopes, "scopes")
    if not wanted:
        raise ValueError("scopes must name at least one scope to add")
    body: dict[str, Any] = {"scopes": wanted}
    if return_to is not None:
        body["return_to"] = return_to
    path = account_path(account) + "/authorizations"
    # Each call starts its own flow (a new id and state): never repeated blindly.
    return Call("POST", path, Authorization.from_json, json=body, idempotent=False)


def start_authorization(
    *, login_hint: str | None, scopes: Sequence[str] | None, return_to: str | None
) -> Call[Authorization]:
    body: dict[str, Any] = {}
    if login_hint is not None:
        body["login_hint"] = login_hint
    if scopes is not None:
        body["scopes"] = _each(scopes, "scopes")
    if return_to is not None:
        body["return_to"] = return_to
    return Call("POST", "/v1/authorizations", Authorization.from_json, json=body, idempotent=False)


def get_authorization(authorization_id: str) -> Call[AuthorizationOutcome]:
    path = "/v1/authorizations/" + _segment(authorization_id, "authorization_id")
    return Call("GET", path, AuthorizationOutcome.from_json)


def exchange_code(
    code: str, *, redirect_uri: str | None, code_verifier: str | None
) -> Call[Account]:
    body: dict[str, Any] = {"code": code}
    if redirect_uri is not None:
        body["redirect_uri"] = redirect_uri
    if code_verifier is not None:
        body["code_verifier"] = code_verifier
    # A code is good once: a retry after the broker may have used it would fail anyway.
    return Call("POST", "/v1/oauth/exchange", Account.from_json, json=body, idempotent=False)
