"""Error answers as Google sends them: OAuth JSON errors, Google API error bodies, error pages."""

from __future__ import annotations

import html
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(status: int, error: str, description: str | None = None) -> JSONResponse:
    body = {"error": error}
    if description is not None:
        body["error_description"] = description
    return JSONResponse(body, status_code=status, headers=NO_STORE)


_GOOGLE_STATUS = {
    400: ("INVALID_ARGUMENT", "badRequest", "Bad Request"),
    401: (
        "UNAUTHENTICATED",
        "authError",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    ),
    403: ("PERMISSION_DENIED", "forbidden", "The caller does not have permission"),
    404: ("NOT_FOUND", "notFound", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "rateLimitExceeded",
        "Resource has been exhausted (e.g. check quota).",
    ),
    500: ("INTERNAL", "backendError", "Internal error encountered."),
    502: ("UNAVAILABLE", "backendError", "Bad Gateway"),
    503: ("UNAVAILABLE", "backendError", "The service is currently unavailable."),
    504: ("DEADLINE_EXCEEDED", "backendError", "The request timed out."),
}
# Where Gmail keeps its classic text in errors[0].message beside a newer top-level message.
_CLASSIC_MESSAGES = {
    "authError": "Invalid Credentials",
    "insufficientPermissions": "Insufficient Permission",
}
_REASON_MESSAGES = {
    "insufficientPermissions": "Request had insufficient authentication scopes.",
    "userRateLimitExceeded": "User-rate limit exceeded.",
    "rateLimitExceeded": "Rate Limit Exceeded",
    "dailyLimitExceeded": "Daily Limit Exceeded",
    "invalidArgument": "Invalid argument",
}
_REASON_DOMAINS = {
    "userRateLimitExceeded": "usageLimits",
    "rateLimitExceeded": "usageLimits",
    "dailyLimitExceeded": "usageLimits",
}


def google_api_error(
    status: int,
    reason: str | None = None,
    message: str | None = None,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error body as Google's JSON APIs send it: {"error": {code, message, errors, status}}.

    errors[0].message repeats the specific message ("Invalid pageToken" in both places,
    laravel-gmail#121), except where Gmail keeps its classic text there ("Invalid
    Credentials", "Insufficient Permission": dacastro4/laravel-gmail#273,
    googleworkspace/php-samples#123). `details` carries google.rpc objects such as ErrorInfo.
    """
    status_name, default_reason, default_message = _GOOGLE_STATUS.get(
        status, ("UNKNOWN", "unknown", "Error")
    )
    reason = reason or default_reason
    text = message or (
        default_message if reason == default_reason else _REASON_MESSAGES.get(reason, reason)
    )
    detail: dict[str, Any] = {
        "message": _CLASSIC_MESSAGES.get(reason, text),
        "domain": _REASON_DOMAINS.get(reason, "global"),
        "reason": reason,
    }
    answer_headers = dict(headers or {})
    if status == 401:
        detail.update(location="Authorization", locationType="header")
        answer_headers.setdefault(
            "WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        )
    error: dict[str, Any] = {
        "code": status,
        "message": text,
        "errors": [detail],
        "status": status_name,
    }
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=answer_headers)


def error_page(status: int, error: str, explanation: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><title>Error {status}: {html.escape(error)}</title>"
        f"<h1>Access blocked: authorization error</h1><p>{html.escape(explanation)}</p>"
        f"<p>Error {status}: <code>{html.escape(error)}</code></p>",
        status_code=status,
    )
