"""Who is calling a Gmail endpoint: the bearer token's user and scopes, or Gmail's error.

Gmail answers 401 `authError` for a missing, expired or revoked token, 403
`insufficientPermissions` for a token without a Gmail scope, and 403 for a
`userId` other than `me` or the token's own address.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from google_sandbox.errors import google_api_error
from google_sandbox.state import GMAIL_SCOPE_PREFIX, SandboxState, SandboxUser

GMAIL_READ_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/gmail.readonly",
        "https://www.googleapis.com/auth/gmail.metadata",
        "https://www.googleapis.com/auth/gmail.modify",
        "https://mail.google.com/",
    }
)


@dataclass(frozen=True)
class GmailCaller:
    user: SandboxUser
    scopes: frozenset[str]


def bearer_user(state: SandboxState, authorization: str) -> SandboxUser | None:
    """The user a valid bearer token belongs to (no scope check), else None."""
    if not authorization.lower().startswith("bearer "):
        return None
    access = state.valid_access_token(authorization[7:].strip())
    if access is None:
        return None
    return state.users.get(state.grants[access.grant_id].email)


def gmail_caller(state: SandboxState, request: Request, user_id: str) -> GmailCaller | JSONResponse:
    header = request.headers.get("authorization", "")
    access = (
        state.valid_access_token(header[7:].strip())
        if header.lower().startswith("bearer ")
        else None
    )
    if access is None:
        return google_api_error(401, "authError")
    if not access.scopes & GMAIL_READ_SCOPES and not any(
        scope.startswith(GMAIL_SCOPE_PREFIX) for scope in access.scopes
    ):
        return google_api_error(
            403, "insufficientPermissions", "Request had insufficient authentication scopes."
        )
    owner = state.users[state.grants[access.grant_id].email]
    if user_id not in ("me", owner.email):
        return google_api_error(403, "forbidden", "Delegation denied for " + user_id)
    return GmailCaller(owner, frozenset(access.scopes))
