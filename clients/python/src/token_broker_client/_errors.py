"""What the client raises: one exception class per problem code the broker documents.

The broker answers every failure as RFC 9457 problem+json with a stable `code`
(its README's problem table). `problem_from_response` is the one place a
response becomes an exception: it looks the code up in the table that the
classes below fill in as they are defined, so a new code is a two-line class.
A code this version does not know still raises `BrokerProblem`, carrying the
status, code, detail, request id and any `authorization_url` or `retry_after`.
"""

from __future__ import annotations

import email.utils
import json
from datetime import datetime, timezone
from typing import Any, ClassVar

import httpx

_PROBLEM_CLASSES: dict[str, type[BrokerProblem]] = {}


class BrokerError(Exception):
    """Anything the client raises about the broker: catch this to catch them all."""


class BrokerUnreachable(BrokerError):
    """No usable answer from the broker: connection refused or reset, or a timeout.

    `request_sent` is False when the broker cannot have seen the request (it was
    never connected to), so even a request that is not idempotent may be repeated.
    """

    def __init__(self, message: str, *, request_sent: bool) -> None:
        self.request_sent = request_sent
        super().__init__(message)


class UnexpectedResponse(BrokerError):
    """An answer that is neither the documented body nor a problem (a proxy's error page)."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class IncompleteStream(BrokerError):
    """An NDJSON listing ended without its final status line: it was cut short.

    `received` counts the items that did arrive; the listing is not complete.
    """

    def __init__(self, message: str, *, received: int) -> None:
        self.received = received
        super().__init__(message)


class BrokerProblem(BrokerError):
    """The broker refused or failed a request and said why (problem+json).

    Subclasses exist for every documented `code`; an unknown code raises this class.
    """

    code: ClassVar[str] = ""

    def __init__(
        self, problem: dict[str, Any], *, status: int, retry_after: float | None = None
    ) -> None:
        self.problem = problem
        self.status = status
        self.title = _text(problem.get("title"))
        self.detail = _text(problem.get("detail"))
        self.request_id = _text(problem.get("request_id")) or None
        self.authorization_url: str | None = _text(problem.get("authorization_url")) or None
        body_retry = problem.get("retry_after")
        if isinstance(body_retry, int | float) and not isinstance(body_retry, bool):
            retry_after = max(float(body_retry), retry_after or 0.0)
        self.retry_after = retry_after
        message = f"{status} {self.problem_code}: {self.detail or self.title}"
        if self.request_id:
            message += f" (request {self.request_id})"
        super().__init__(message)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code:
            _PROBLEM_CLASSES.setdefault(cls.code, cls)

    @property
    def problem_code(self) -> str:
        """The `code` the broker sent (for a subclass, that class's code)."""
        return _text(self.problem.get("code")) or self.code or "unknown"

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (429 and 503 answers)."""
        return self.status in (429, 503)


# Callers and their keys.
class Unauthenticated(BrokerProblem):
    """The API key is missing, unknown, revoked, or past its rotation overlap."""

    code = "unauthenticated"


class Forbidden(BrokerProblem):
    """The API key lacks the permission this call needs (`tokens:read`, ...)."""

    code = "forbidden"


class RateLimited(BrokerProblem):
    """This API client exceeded its request rate at the broker; `retry_after` says when."""

    code = "rate_limited"


# Input the broker refused.
class ValidationFailed(BrokerProblem):
    """The request does not match the schema; `errors` lists where."""

    code = "validation_failed"

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


class BadRequest(BrokerProblem):
    """The broker cannot process the request as sent (`detail` says why)."""

    code = "bad_request"


class InvalidCursor(BrokerProblem):
    """A cursor this API did not make, altered, or another account's: start without one."""

    code = "invalid_cursor"


class ReturnToNotAllowed(BrokerProblem):
    """`return_to` matches no entry of the broker's `TOKEN_BROKER_RETURN_TO_ALLOWLIST`."""

    code = "return_to_not_allowed"


class ScopeNotAllowed(BrokerProblem):
    """A requested scope is not one the broker is configured for; `scopes_not_allowed`."""

    code = "scope_not_allowed"

    @property
    def scopes_not_allowed(self) -> list[str]:
        return _strings(self.problem, "scopes_not_allowed")


class UnknownLabel(BrokerProblem):
    """A label id is not a label of the mailbox (Gmail's "Invalid label"); `label_id` names it.

    Label ids, not names: `INBOX`, `Label_12`.
    """

    code = "unknown_label"

    @property
    def label_id(self) -> str | None:
        return _string(self.problem, "label_id")


class TooManyForJson(BrokerProblem):
    """More messages (or changes) match than one JSON answer holds, `max_messages`: stream
    them instead (`stream_messages`, `stream_message_details`, `stream_changes`), or pass
    a smaller `limit`. Nothing was fetched."""

    code = "too_many_for_json"

    @property
    def max_messages(self) -> int | None:
        value = self.problem.get("max_messages")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class NotFound(BrokerProblem):
    """No such path at the broker (a client older or newer than the broker?)."""

    code = "not_found"


class AccountNotFound(BrokerProblem):
    """No account with that subject id, nor with that email verified."""

    code = "account_not_found"


class AmbiguousAccount(BrokerProblem):
    """Several accounts hold that verified email; `subjects` lists them: use one."""

    code = "ambiguous_account"

    @property
    def subjects(self) -> list[str]:
        return _strings(self.problem, "subjects")


class AuthorizationNotFound(BrokerProblem):
    """This API client started no authorization with that id (or it is past retention)."""

    code = "authorization_not_found"


class MessageNotFound(BrokerProblem):
    """Gmail has no message with that id in the account (deleted, or never there)."""

    code = "message_not_found"


class CursorExpired(BrokerProblem):
    """Gmail no longer keeps the history a changes cursor points into (it keeps about a
    week, sometimes only hours). List the mailbox again, then continue from `cursor`, the
    fresh starting point this problem carries (at Gmail history id `history_id`);
    `follow_changes(..., on_relist=...)` does both."""

    code = "cursor_expired"

    @property
    def cursor(self) -> str | None:
        return _string(self.problem, "cursor")

    @property
    def history_id(self) -> str | None:
        return _string(self.problem, "history_id")


class UnsupportedMediaType(BrokerProblem):
    """A body not sent as `Content-Type: application/json`."""

    code = "unsupported_media_type"


class MethodNotAllowed(BrokerProblem):
    """The path exists at the broker, but not with this HTTP method."""

    code = "method_not_allowed"


class PayloadTooLarge(BrokerProblem):
    """The request body is larger than the broker takes."""

    code = "payload_too_large"


class UriTooLong(BrokerProblem):
    """The query string is longer than the broker takes (a very long `q`?)."""

    code = "uri_too_long"


class HeadersTooLarge(BrokerProblem):
    """The request headers are larger than the broker takes."""

    code = "headers_too_large"


# Gmail push (sent by Cloud Pub/Sub, not by services; here so every code has its class).
class InvalidPush(BrokerProblem):
    """`POST /v1/gmail/push`: the body is not a Pub/Sub push of a Gmail notification."""

    code = "invalid_push"


class PushUnauthenticated(BrokerProblem):
    """`POST /v1/gmail/push`: no valid Pub/Sub OIDC token (missing, forged, or replayed)."""

    code = "push_unauthenticated"


class PushNotConfigured(BrokerProblem):
    """`POST /v1/gmail/push` on a broker without Gmail push configured."""

    code = "push_not_configured"


# Connecting accounts.
class InvalidState(BrokerProblem):
    """The OAuth state is unknown, used or expired: start the authorization again."""

    code = "invalid_state"


class AccessDenied(BrokerProblem):
    """The user did not grant access (pressed *Cancel* at Google)."""

    code = "access_denied"


class CodeExchangeFailed(BrokerProblem):
    """The provider refused the authorization code; `authorization_url` starts over."""

    code = "code_exchange_failed"


class ScopeNotGranted(BrokerProblem):
    """The account's grant lacks `missing_scopes`: a token asked for with `scopes`, or a
    listing that needs one of Gmail's read scopes; or, at connect, the user unticked a
    required scope (nothing was stored).

    `authorization_url` asks the user for them (an incremental authorization: the account
    stays the same, its scopes grow)."""

    code = "scope_not_granted"

    @property
    def missing_scopes(self) -> list[str]:
        return _strings(self.problem, "missing_scopes")


class NoRefreshToken(BrokerProblem):
    """No refresh token came back and none is stored: send the user to `authorization_url`."""

    code = "no_refresh_token"


class ReauthorizationRequired(BrokerProblem):
    """The account's grant is dead (revoked, expired): send the user to `authorization_url`.

    `status_reason` says why (the broker README's "Grant health"); `status_detail` what
    Google answered and what the broker knew."""

    code = "reauthorization_required"

    @property
    def status_reason(self) -> str | None:
        value = self.problem.get("status_reason")
        return value if isinstance(value, str) else None

    @property
    def status_detail(self) -> str | None:
        value = self.problem.get("status_detail")
        return value if isinstance(value, str) else None


class AccountMismatch(BrokerProblem):
    """A re-authorization was completed as another Google account; nothing was stored.

    `authorization_url` lets the right person try again."""

    code = "account_mismatch"


class AccountSuspended(BrokerProblem):
    """Google disabled the Google account (`status_reason` says how); the grant is kept and
    serves again when Google enables the account."""

    code = "account_suspended"

    @property
    def status_reason(self) -> str | None:
        value = self.problem.get("status_reason")
        return value if isinstance(value, str) else None


class InvalidSecurityEvent(BrokerProblem):
    """`POST /v1/risc`: a security event token the broker does not trust (`err`, RFC 8935)."""

    code = "invalid_security_event"

    @property
    def err(self) -> str | None:
        value = self.problem.get("err")
        return value if isinstance(value, str) else None


class IssuerMismatch(BrokerProblem):
    """The OAuth callback named another provider (RFC 9207 `iss`); nothing was exchanged."""

    code = "issuer_mismatch"


class InvalidLink(BrokerProblem):
    """A re-authorization link that is malformed, altered, expired, or whose account is gone."""

    code = "invalid_link"


# The provider.
class NoUserId(BrokerProblem):
    """The provider named no subject id for the account (ID token or userinfo)."""

    code = "no_user_id"


class UpstreamError(BrokerProblem):
    """The provider answered an error the broker cannot recover from; for Gmail,
    `gmail_reason` is Gmail's reason (e.g. `failedPrecondition`)."""

    code = "upstream_error"

    @property
    def gmail_reason(self) -> str | None:
        return _string(self.problem, "gmail_reason")


class ProviderRejectedClient(BrokerProblem):
    """The broker's own Google client id or secret is wrong: an operator must act."""

    code = "provider_rejected_client"


class UpstreamRateLimited(BrokerProblem):
    """Gmail kept rate limiting past the broker's retries; `retry_after` says when."""

    code = "upstream_rate_limited"


class UpstreamUnavailable(BrokerProblem):
    """The provider did not answer in time; retry after `retry_after` seconds."""

    code = "upstream_unavailable"


# The broker itself.
class KeyUnavailable(BrokerProblem):
    """A stored secret is sealed with a key this replica cannot use (`key_id`); another
    replica may hold it: retry after `retry_after`, and tell the operator."""

    code = "key_unavailable"

    @property
    def key_id(self) -> str | None:
        value = self.problem.get("key_id")
        return value if isinstance(value, str) else None


class DatabaseUnavailable(BrokerProblem):
    """The broker's database is not answering; retry after `retry_after` seconds."""

    code = "database_unavailable"


class NotReady(BrokerProblem):
    """A readiness check of the broker failed; `checks` gives each check's state."""

    code = "not_ready"

    @property
    def checks(self) -> dict[str, str]:
        checks = self.problem.get("checks")
        if not isinstance(checks, dict):
            return {}
        return {name: state for name, state in checks.items() if isinstance(state, str)}


class ShuttingDown(BrokerProblem):
    """This broker instance is stopping; another answers a retry."""

    code = "shutting_down"


class InternalError(BrokerProblem):
    """A bug in the broker; `request_id` finds it in the broker's logs."""

    code = "internal_error"


def problem_class(code: str) -> type[BrokerProblem]:
    """The exception class for a problem code; `BrokerProblem` for codes not known here."""
    return _PROBLEM_CLASSES.get(code, BrokerProblem)


def problem_from_body(
    problem: dict[str, Any], *, status: int, retry_after: float | None = None
) -> BrokerProblem:
    """The exception for a problem object (a response body, or a stream's failure line)."""
    return problem_class(_text(problem.get("code")))(
        problem, status=status, retry_after=retry_after
    )


def problem_from_response(response: httpx.Response, body: bytes) -> BrokerError:
    """The exception for an error response whose body has been read."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        problem = json.loads(body)
    except ValueError:
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("code"), str):
        return problem_from_body(problem, status=response.status_code, retry_after=retry_after)
    return UnexpectedResponse(
        f"HTTP {response.status_code} from the broker without a problem body "
        f"({response.headers.get('content-type', 'no content type')})",
        status=response.status_code,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _string(problem: dict[str, Any], key: str) -> str | None:
    """An extension member the broker sends as a string (`label_id`, `cursor`, ...)."""
    value = problem.get(key)
    return value if isinstance(value, str) else None


def _strings(problem: dict[str, Any], key: str) -> list[str]:
    """An extension member the broker sends as a list of strings (`subjects`, ...)."""
    value = problem.get(key)
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
