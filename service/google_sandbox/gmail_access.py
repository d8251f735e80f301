"""Who is calling a Gmail endpoint: the bearer token's user and scopes, or Gmail's error.

Gmail answers 401 `authError` for a missing, expired or revoked token; 403
`insufficientPermissions` for a token without one of the method's scopes, with a
google.rpc.ErrorInfo reason ACCESS_TOKEN_SCOPE_INSUFFICIENT in `error.details`
(googleworkspace/php-samples#123) and a `WWW-Authenticate: Bearer …
error="insufficient_scope", scope="…"` header naming the scopes that would do
(anthonyjgrove/react-google-login#548, googleworkspace/apps-script-oauth2#172); and 403
for a `userId` other than `me` or the token's own address.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from google_sandbox.errors import google_api_error
from google_sandbox.records import SandboxUser
from google_sandbox.state import SandboxState


@dataclass(frozen=True)
class GmailCaller:
    user: SandboxUser
    scopes: frozenset[str]


def bearer_user(state: SandboxState, authorization: str) -> SandboxUser | None:
    """The user a valid bearer token belongs to (no scope check), else None."""
    access = state.valid_access_token(_bearer(authorization))
    if access is None:
        return None
    return state.users.get(state.grants[access.grant_id].email)


def insufficient_scope(method: str, accepted: frozenset[str]) -> JSONResponse:
    return google_api_error(
        403,
        "insufficientPermissions",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com",
                "metadata": {"method": method, "service": "gmail.googleapis.com"},
            }
        ],
        headers={
            "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
            f'error="insufficient_scope", scope="{" ".join(sorted(accepted))}"'
        },
    )


def gmail_caller(
    state: SandboxState,
    request: Request,
    user_id: str,
    *,
    method: str,
    accepted: frozenset[str],
) -> GmailCaller | JSONResponse:
    """The calling user for Gmail method `method`, which `accepted` scopes may call."""
    access = state.valid_access_token(_bearer(request.headers.get("authorization", "")))
    if access is None:
        return google_api_error(401, "authError")
    if not access.scopes & accepted:
        return insufficient_scope(method, accepted)
    owner = state.users[state.grants[access.grant_id].email]
    if user_id not in ("me", owner.email):
        return google_api_error(403, "forbidden", "Delegation denied for " + user_id)
    return GmailCaller(owner, frozenset(access.scopes))


def _bearer(authorization: str) -> str:
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
