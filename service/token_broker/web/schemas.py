"""API request and response models. Never a token in an account; never a secret in a problem."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from token_broker.services.grant_health import StatusReason
from token_broker.store.models import Account as AccountRow
from token_broker.store.models import AccountStatus

# No control characters, spaces or backslashes: identifiers, emails, codes and scopes
# never contain them, and refusing them here keeps them out of queries, logs and
# upstream requests.
TOKEN_TEXT = r"^[^\x00-\x20\x7f\\]+$"
# Anything printable: search queries may contain spaces, never control characters.
PRINTABLE_TEXT = r"^[^\x00-\x1f\x7f]*$"
LABEL_ID = r"^[A-Za-z0-9_-]{1,100}$"
Scope = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=TOKEN_TEXT)]


class Problem(BaseModel):
    """RFC 9457 problem details, with the broker's stable `code`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:token-broker:problem:account_not_found"])
    title: str
    status: int
    detail: str
    code: str = Field(examples=["account_not_found"])
    request_id: str | None = None
    authorization_url: str | None = Field(
        default=None, description="Where to send the user to (re)connect the account."
    )
    retry_after: int | None = Field(default=None, description="Seconds to wait before retrying.")
    label_id: str | None = Field(
        default=None, description="`unknown_label`: the labelIds value Gmail does not know."
    )
    cursor: str | None = Field(
        default=None, description="`cursor_expired`: a fresh starting point for changes."
    )
    history_id: str | None = Field(
        default=None, description="`cursor_expired`: the Gmail history id `cursor` starts at."
    )
    missing_scopes: list[str] | None = Field(
        default=None, description="`scope_not_granted`: the scopes the grant lacks."
    )
    status_reason: str | None = Field(
        default=None,
        description="`reauthorization_required`, `account_suspended`: why (README, "
        '"Grant health").',
    )
    status_detail: str | None = Field(
        default=None, description="What Google answered and what the broker knew."
    )
    err: str | None = Field(
        default=None,
        description="`invalid_security_event`: RFC 8935's error code (invalid_request, "
        "invalid_key, invalid_issuer, invalid_audience, authentication_failed).",
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors: location and message."
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


class Account(BaseModel):
    """A connected Google account. Never carries a token."""

    id: str
    subject: str
    email: str | None = Field(description="Normalised: trimmed, ASCII letters lower-cased.")
    email_verified: bool = Field(
        description="Whether the provider said the email is verified. Only verified "
        "addresses reach an account as `{account}`; others reach it by subject only."
    )
    status: Literal["active", "revoked", "suspended"] = Field(
        description="active; revoked (the grant ended: the user must connect again); "
        "suspended (Google disabled the Google account; lifted when Google enables it)."
    )
    status_reason: StatusReason | None = Field(
        description='Why the status is what it is (README, "Grant health"); on an active '
        "account only session_policy (the user must sign in again)."
    )
    status_detail: str | None = Field(
        description="What Google answered and what the broker knew when it decided the reason."
    )
    status_changed_at: datetime | None = Field(
        description="When the status (or its reason) last changed."
    )
    scopes: list[str] = Field(description="The scopes Google granted, in Google's spelling.")
    granted_at: datetime | None = Field(description="The last consent.")
    grant_expires_at: datetime | None = Field(
        description="When the grant ends, when that is known: 7 days after consent for an "
        "app in testing status, or the end of time-based access."
    )
    created_at: datetime
    updated_at: datetime
    last_refreshed_at: datetime | None
    access_token_expires_at: datetime | None

    @classmethod
    def of(cls, account: AccountRow) -> Account:
        return cls(
            id=account.id,
            subject=account.subject,
            email=account.email,
            email_verified=account.email_verified,
            status=AccountStatus(account.status).value,
            status_reason=StatusReason(account.status_reason) if account.status_reason else None,
            status_detail=account.status_detail,
            status_changed_at=account.status_changed_at,
            scopes=account.scope_list,
            granted_at=account.granted_at,
            grant_expires_at=account.grant_expires_at,
            created_at=account.created_at,
            updated_at=account.updated_at,
            last_refreshed_at=account.last_refreshed_at,
            access_token_expires_at=account.access_token_expires_at,
        )


class AccountPage(BaseModel):
    items: list[Account]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class AuthorizationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    login_hint: str | None = Field(
        default=None,
        max_length=320,
        pattern=TOKEN_TEXT,
        description="Email address to preselect at consent.",
    )
    scopes: list[Scope] | None = Field(
        default=None,
        max_length=20,
        description="Scopes to request, from TOKEN_BROKER_SCOPES; default: all of them. "
        "The required scopes are always added.",
    )
    return_to: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the callback sends the browser afterwards; must match "
        "TOKEN_BROKER_RETURN_TO_ALLOWLIST.",
    )


class ScopesRequest(BaseModel):
    """Incremental authorization: scopes to add to a connected account."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[Scope] = Field(
        min_length=1,
        max_length=20,
        description="Scopes to add, from TOKEN_BROKER_SCOPES. The account keeps those it has.",
    )
    return_to: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the callback sends the browser afterwards; must match "
        "TOKEN_BROKER_RETURN_TO_ALLOWLIST.",
    )


class Authorization(BaseModel):
    id: str = Field(
        description="Keep it in the user's session before redirecting; the callback sends "
        "the browser back to return_to with `authorization=<id>`, and "
        "`GET /v1/authorizations/{id}` tells what it produced."
    )
    authorization_url: str = Field(description="Send the user's browser here.")
    state: str = Field(description="The one-time state carried through the flow.")
    expires_at: datetime


class ConnectedAccount(BaseModel):
    id: str
    subject: str
    email: str | None


class AuthorizationError(BaseModel):
    code: str = Field(examples=["account_mismatch"], description="The problem code.")
    detail: str


class AuthorizationOutcome(BaseModel):
    """What one authorization produced; only the API client that started it can read it."""

    id: str
    status: Literal["pending", "connected", "failed", "expired"] = Field(
        description="pending until the callback; expired when its state lapsed unused."
    )
    account: ConnectedAccount | None = Field(
        default=None, description="The account connected (status connected)."
    )
    error: AuthorizationError | None = Field(
        default=None, description="Why it failed (status failed)."
    )
    created_at: datetime
    expires_at: datetime = Field(description="When its state lapses if unused.")
    completed_at: datetime | None


class ExchangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        min_length=1, max_length=2048, pattern=TOKEN_TEXT, description="The authorization code."
    )
    redirect_uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=TOKEN_TEXT,
        description="The redirect URI the code was issued for; default "
        "TOKEN_BROKER_EXCHANGE_REDIRECT_URI (`postmessage` for Google's popup code client).",
    )
    code_verifier: str | None = Field(
        default=None, min_length=43, max_length=128, pattern=r"^[A-Za-z0-9._~-]+$"
    )


class AccessToken(BaseModel):
    access_token: str = Field(description="A Google OAuth 2.0 access token for the account.")
    token_type: Literal["Bearer"]
    expires_at: datetime
    expires_in: int = Field(description="Seconds until expiry, from the moment of the answer.")
    scopes: list[str]


class Deleted(BaseModel):
    deleted: Literal[True]
    upstream_revoked: bool = Field(
        description="Whether the provider confirmed the grant is revoked (best effort)."
    )


class MessageRef(BaseModel):
    id: str
    threadId: str


class MessageList(BaseModel):
    messages: list[MessageRef]
    count: int
    result_size_estimate: int = Field(
        description="Gmail's estimate from the first page, not a count (Gmail answers 201 for "
        "most non-empty queries); `count` is the number listed."
    )
    pages: int = Field(description="Upstream pages fetched (500 messages each).")


class GmailMessage(BaseModel):
    """Gmail's Message resource, passed through unchanged (fields depend on `format`)."""

    model_config = ConfigDict(extra="allow")

    id: str
    threadId: str
    labelIds: list[str] | None = None
    snippet: str | None = None
    payload: dict[str, Any] | None = None
    raw: str | None = None
    sizeEstimate: int | None = None
    historyId: str | None = None
    internalDate: str | None = None


class NotFetched(BaseModel):
    id: str
    threadId: str
    status: int = Field(description="Gmail's status for it (404: deleted since the listing).")
    reason: str = Field(description="Gmail's reason, e.g. notFound.")


class MessageDetailsList(BaseModel):
    """A listing with `format`: each message's details, in listing order."""

    messages: list[GmailMessage]
    count: int = Field(description="Messages listed.")
    result_size_estimate: int
    pages: int
    fetched: int = Field(description="Messages whose details are in `messages`.")
    batches: int = Field(description="Gmail batch requests sent.")
    not_fetched_count: int
    not_fetched: list[NotFetched] = Field(
        description="Messages Gmail would not answer (the first 10,000), with its status."
    )


class Change(BaseModel):
    """One change to a message, from one Gmail history record."""

    type: Literal["message_added", "message_deleted", "labels_added", "labels_removed"]
    history_id: str = Field(description="The Gmail history record it comes from.")
    message_id: str
    thread_id: str
    label_ids: list[str] = Field(
        description="For labels_added / labels_removed: the labels added or removed; "
        "otherwise the message's labels as Gmail reported them."
    )


class ChangeList(BaseModel):
    changes: list[Change] = Field(description="In history order; empty without a cursor.")
    count: int
    pages: int = Field(description="Gmail history.list pages read (500 records each).")
    cursor: str = Field(description="Pass as `cursor` next time; opaque and tamper-evident.")
    history_id: str = Field(description="The Gmail history id the cursor starts after.")
