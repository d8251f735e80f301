"""The catalogue of problems a caller can see: one class per stable `code`.

Every failure a caller can see is a `BrokerError` subclass. Messages are written
here or by the services; they never carry a token, code, secret or API key, and
upstream bodies are never echoed. Rendering as RFC 9457 problem+json happens in
one place, `web/problems.py`: this module knows no web framework.
"""

from __future__ import annotations

from typing import Any, ClassVar

from token_broker.observability.request_ids import current_request_id


def problem_type(code: str) -> str:
    return f"urn:token-broker:problem:{code}"


class BrokerError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    default_detail: ClassVar[str] = "The broker failed unexpectedly; the request id identifies it."

    def __init__(
        self,
        detail: str | None = None,
        *,
        authorization_url: str | None = None,
        retry_after: int | None = None,
        **extensions: Any,
    ) -> None:
        self.detail = detail or self.default_detail
        self.authorization_url = authorization_url
        self.retry_after = retry_after
        self.extensions = extensions
        super().__init__(self.detail)

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": problem_type(self.code),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.authorization_url is not None:
            body["authorization_url"] = self.authorization_url
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        body.update(self.extensions)
        request_id = current_request_id()
        if request_id is not None:
            body["request_id"] = request_id
        return body

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None:
            return {"Retry-After": str(self.retry_after)}
        return {}


class InternalError(BrokerError):
    pass


class ValidationFailed(BrokerError):
    status = 422
    code = "validation_failed"
    title = "Request validation failed"
    default_detail = "The request does not match the documented schema."


class BadRequest(BrokerError):
    status = 400
    code = "bad_request"
    title = "Bad request"
    default_detail = "The request cannot be processed."


class InvalidCursor(BrokerError):
    status = 400
    code = "invalid_cursor"
    title = "Invalid cursor"
    default_detail = "cursor is not one this API returned; start again without it."


class ReturnToNotAllowed(BrokerError):
    status = 400
    code = "return_to_not_allowed"
    title = "return_to is not allowed"
    default_detail = "return_to does not match any entry of TOKEN_BROKER_RETURN_TO_ALLOWLIST."


class ScopeNotAllowed(BrokerError):
    status = 400
    code = "scope_not_allowed"
    title = "Scope not allowed"
    default_detail = "Only scopes configured in TOKEN_BROKER_SCOPES may be requested."


class UnknownLabel(BrokerError):
    status = 400
    code = "unknown_label"
    title = "Unknown label"
    default_detail = "A labelIds value is not a label of this mailbox (see label_id)."


class Unauthenticated(BrokerError):
    status = 401
    code = "unauthenticated"
    title = "Unauthenticated"
    default_detail = "Send a valid API key as `Authorization: Bearer <key>`."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(BrokerError):
    status = 403
    code = "forbidden"
    title = "Forbidden"
    default_detail = "This API client lacks the permission this operation needs."


class NotFound(BrokerError):
    status = 404
    code = "not_found"
    title = "Not found"
    default_detail = "No such resource."


class AccountNotFound(BrokerError):
    status = 404
    code = "account_not_found"
    title = "Account not found"
    default_detail = "No connected account has that subject id or email address."


class MessageNotFound(BrokerError):
    status = 404
    code = "message_not_found"
    title = "Message not found"
    default_detail = "Gmail has no message with that id in this account (it may have been deleted)."


class TooManyForJson(BrokerError):
    status = 400
    code = "too_many_for_json"
    title = "Too many messages for a JSON answer"
    default_detail = (
        "A JSON answer holds at most max_messages messages (fewer with details); ask with "
        "`Accept: application/x-ndjson` to stream any number, or pass a smaller `limit`."
    )


class AmbiguousAccount(BrokerError):
    status = 409
    code = "ambiguous_account"
    title = "Ambiguous account"
    default_detail = (
        "Several connected accounts hold this verified email address (an address can move "
        "between Google accounts); use one of the subjects listed in `subjects`."
    )


class AuthorizationNotFound(BrokerError):
    status = 404
    code = "authorization_not_found"
    title = "Authorization not found"
    default_detail = (
        "This API client started no authorization with that id, or its outcome is older "
        "than TOKEN_BROKER_AUTHORIZATION_RETENTION_DAYS."
    )


class CursorExpired(BrokerError):
    status = 410
    code = "cursor_expired"
    title = "Cursor expired"
    default_detail = (
        "Gmail no longer keeps the history this cursor points into (it keeps about a week, "
        "sometimes only hours): list the mailbox again (GET .../messages), then ask for "
        "changes from `cursor`, the fresh starting point in this answer."
    )


class InvalidPush(BrokerError):
    status = 400
    code = "invalid_push"
    title = "Invalid push"
    default_detail = (
        "The body is not a Cloud Pub/Sub push of a Gmail notification "
        '({"message": {"data": base64 {"emailAddress", "historyId"}, "messageId"}}).'
    )


class PushUnauthenticated(BrokerError):
    status = 401
    code = "push_unauthenticated"
    title = "Push not authenticated"
    default_detail = (
        "The push carries no valid Pub/Sub OIDC token for this endpoint: missing, not "
        "signed by Google, expired, for another audience or service account, or replayed."
    )

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PushNotConfigured(BrokerError):
    status = 404
    code = "push_not_configured"
    title = "Push not configured"
    default_detail = (
        "This broker does not take Gmail push notifications: set TOKEN_BROKER_GMAIL_PUSH_TOPIC "
        "(with its audience and service account)."
    )


class MethodNotAllowed(BrokerError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"
    default_detail = "This resource does not support that method."


class PayloadTooLarge(BrokerError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"
    default_detail = "The request body exceeds the broker's limit."


class UnsupportedMediaType(BrokerError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"
    default_detail = (
        "The body must be JSON sent with `Content-Type: application/json` "
        "(curl: add -H 'Content-Type: application/json')."
    )


class UriTooLong(BrokerError):
    status = 414
    code = "uri_too_long"
    title = "URI too long"
    default_detail = "The query string exceeds the broker's limit."


class HeadersTooLarge(BrokerError):
    status = 431
    code = "headers_too_large"
    title = "Request header fields too large"
    default_detail = "The request headers exceed the broker's limit."


class InvalidState(BrokerError):
    status = 400
    code = "invalid_state"
    title = "Invalid OAuth state"
    default_detail = "The state is unknown, already used or expired; start the authorization again."


class IssuerMismatch(BrokerError):
    status = 400
    code = "issuer_mismatch"
    title = "Wrong issuer in the callback"
    default_detail = (
        "The callback's iss (RFC 9207) does not name the configured provider; nothing was "
        "exchanged. Start the authorization again."
    )


class InvalidLink(BrokerError):
    status = 400
    code = "invalid_link"
    title = "Invalid re-authorization link"
    default_detail = (
        "The link is malformed, altered or expired, or its account no longer exists; ask "
        "the service that sent it for a new one."
    )


class AccessDenied(BrokerError):
    status = 400
    code = "access_denied"
    title = "Access denied"
    default_detail = "The user did not grant access."


class CodeExchangeFailed(BrokerError):
    status = 400
    code = "code_exchange_failed"
    title = "Authorization code exchange failed"
    default_detail = (
        "The provider refused the authorization code (bad, used or expired code, wrong "
        "verifier or redirect URI); send the user to authorization_url."
    )


class NoRefreshToken(BrokerError):
    status = 409
    code = "no_refresh_token"
    title = "No refresh token"
    default_detail = (
        "The provider returned no refresh token and none is stored for this account; "
        "send the user to authorization_url, which forces consent."
    )


class ScopeNotGranted(BrokerError):
    status = 403
    code = "scope_not_granted"
    title = "Required scope not granted"
    default_detail = "The user did not grant a scope the broker requires."


class AccountMismatch(BrokerError):
    status = 403
    code = "account_mismatch"
    title = "A different Google account"
    default_detail = (
        "This link reconnects one particular account, and consent was given as another; "
        "nothing was stored. Sign in with the account the link was sent for."
    )


class ReauthorizationRequired(BrokerError):
    status = 409
    code = "reauthorization_required"
    title = "Reauthorization required"
    default_detail = (
        "The account's grant was revoked or expired; send the user to authorization_url."
    )


class AccountSuspended(BrokerError):
    status = 409
    code = "account_suspended"
    title = "Account suspended"
    default_detail = (
        "Google disabled this Google account (Cross-Account Protection); no token is handed "
        "out until Google enables it again (see status_reason)."
    )


class InvalidSecurityEvent(BrokerError):
    """A security event token the receiver refused; `err` is RFC 8935's error code."""

    status = 400
    code = "invalid_security_event"
    title = "Invalid security event token"
    default_detail = "The security event token was refused (see err and description)."

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description, err=err, description=description)


class NoUserId(BrokerError):
    status = 502
    code = "no_user_id"
    title = "No user id"
    default_detail = "The provider returned no subject id for the account (ID token or userinfo)."


class UpstreamError(BrokerError):
    status = 502
    code = "upstream_error"
    title = "Upstream error"
    default_detail = "The provider answered with an error the broker cannot recover from."


class ProviderRejectedClient(BrokerError):
    status = 502
    code = "provider_rejected_client"
    title = "Provider rejected the broker's client credentials"
    default_detail = (
        "The provider answered invalid_client: the operator must check "
        "TOKEN_BROKER_GOOGLE_CLIENT_ID / TOKEN_BROKER_GOOGLE_CLIENT_SECRET."
    )


class UpstreamRateLimited(BrokerError):
    status = 429
    code = "upstream_rate_limited"
    title = "Upstream rate limit"
    default_detail = "The provider is rate limiting this account; retry after retry_after seconds."


class UpstreamUnavailable(BrokerError):
    status = 503
    code = "upstream_unavailable"
    title = "Upstream unavailable"
    default_detail = "The provider did not answer in time; retry after retry_after seconds."


class DatabaseUnavailable(BrokerError):
    status = 503
    code = "database_unavailable"
    title = "Database unavailable"
    default_detail = "The broker's database is not answering; retry after retry_after seconds."


class KeyUnavailable(BrokerError):
    status = 503
    code = "key_unavailable"
    title = "Encryption key unavailable"
    default_detail = (
        "A stored secret this request needs is sealed with an encryption key this replica "
        "cannot use (named by key_id: missing from its keyring, or the value does not "
        "authenticate under it); retry after retry_after seconds, and tell the operator."
    )

    def __init__(self, key_id: str | None, *, retry_after: int = 5) -> None:
        named = f"key {key_id}" if key_id else "a key this replica cannot identify"
        super().__init__(
            f"A stored secret this request needs is sealed with {named}, which this replica "
            "cannot use (missing from its keyring, or the value does not authenticate under "
            "it); retry after retry_after seconds, and tell the operator.",
            retry_after=retry_after,
            key_id=key_id,
        )


class NotReady(BrokerError):
    status = 503
    code = "not_ready"
    title = "Not ready"
    default_detail = "A readiness check failed; see checks."


class ShuttingDown(BrokerError):
    status = 503
    code = "shutting_down"
    title = "Shutting down"
    default_detail = "This broker instance is shutting down; retry, another will answer."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, retry_after=1)


class RateLimited(BrokerError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"
    default_detail = "This API client exceeded its request rate; retry after retry_after seconds."


def caller_problems() -> tuple[type[BrokerError], ...]:
    """What any authenticated /v1 route can answer before it does its own work."""
    return (Unauthenticated, Forbidden, RateLimited, DatabaseUnavailable)
