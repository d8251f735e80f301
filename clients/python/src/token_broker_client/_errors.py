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
    code = "unauthenticated"


class Forbidden(BrokerProblem):
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
    code = "bad_request"


class InvalidCursor(BrokerProblem):
    code = "invalid_cursor"


class ReturnToNotAllowed(BrokerProblem):
    code = "return_to_not_allowed"


class ScopeNotAllowed(BrokerProblem):
    code = "scope_not_allowed"


class UnknownLabel(BrokerProblem):
    """A `label_ids` value is not a label of the mailbox; `label_id` names it."""

    code = "unknown_label"

    @property
    def label_id(self) -> str | None:
        value = self.problem.get("label_id")
        return value if isinstance(value, str) else None


class NotFound(BrokerProblem):
    code = "not_found"


class AccountNotFound(BrokerProblem):
    code = "account_not_found"


class AmbiguousAccount(BrokerProblem):
    """Several accounts hold that verified email; `subjects` lists them: use one."""

    code = "ambiguous_account"

    @property
    def subjects(self) -> list[str]:
        subjects = self.problem.get("subjects")
        return [s for s in subjects if isinstance(s, str)] if isinstance(subjects, list) else []


class AuthorizationNotFound(BrokerProblem):
    code = "authorization_not_found"


class MessageNotFound(BrokerProblem):
    code = "message_not_found"


class TooManyForJson(BrokerProblem):
    """A JSON answer with details would hold more than `max_messages`: stream NDJSON."""

    code = "too_many_for_json"

    @property
    def max_messages(self) -> int | None:
        value = self.problem.get("max_messages")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class UnsupportedMediaType(BrokerProblem):
    code = "unsupported_media_type"


class CursorExpired(BrokerProblem):
    """Gmail forgot the history behind a changes cursor: list the mailbox again, then
    continue from `cursor`, the fresh starting point this problem carries."""

    code = "cursor_expired"

    @property
    def cursor(self) -> str | None:
        value = self.problem.get("cursor")
        return value if isinstance(value, str) else None


class InvalidPush(BrokerProblem):
    code = "invalid_push"


class PushUnauthenticated(BrokerProblem):
    code = "push_unauthenticated"


class PushNotConfigured(BrokerProblem):
    code = "push_not_configured"


class MethodNotAllowed(BrokerProblem):
    code = "method_not_allowed"


class PayloadTooLarge(BrokerProblem):
    code = "payload_too_large"


class UriTooLong(BrokerProblem):
    code = "uri_too_long"


class HeadersTooLarge(BrokerProblem):
    code = "headers_too_large"


# Connecting accounts.
class InvalidState(BrokerProblem):
    code = "invalid_state"


class AccessDenied(BrokerProblem):
    code = "access_denied"


class CodeExchangeFailed(BrokerProblem):
    """The provider refused the authorization code; `authorization_url` starts over."""

    code = "code_exchange_failed"


class ScopeNotGranted(BrokerProblem):
    """The user unticked a required scope; `missing_scopes` names them."""

    code = "scope_not_granted"

    @property
    def missing_scopes(self) -> list[str]:
        scopes = self.problem.get("missing_scopes")
        return [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else []


class NoRefreshToken(BrokerProblem):
    """No refresh token came back and none is stored: send the user to `authorization_url`."""

    code = "no_refresh_token"


class ReauthorizationRequired(BrokerProblem):
    """The account's grant is dead (revoked, expired): send the user to `authorization_url`."""

    code = "reauthorization_required"


class AccountMismatch(BrokerProblem):
    """A re-authorization was completed as another Google account; nothing was stored."""

    code = "account_mismatch"


class IssuerMismatch(BrokerProblem):
    code = "issuer_mismatch"


class InvalidLink(BrokerProblem):
    code = "invalid_link"


# The provider.
class NoUserId(BrokerProblem):
    code = "no_user_id"


class UpstreamError(BrokerProblem):
    """The provider answered an error the broker cannot recover from (`gmail_reason`)."""

    code = "upstream_error"


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
    code = "database_unavailable"


class NotReady(BrokerProblem):
    code = "not_ready"


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
