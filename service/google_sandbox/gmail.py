"""Gmail's `users.messages.list`, over each user's seeded mailbox."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from google_sandbox.errors import google_api_error
from google_sandbox.mailbox import InvalidPageToken, compile_query
from google_sandbox.state import GMAIL_SCOPE_PREFIX, SandboxState

GMAIL_READ_SCOPES = {
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/gmail.metadata",
    "https://www.googleapis.com/auth/gmail.modify",
    "https://mail.google.com/",
}


def gmail_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.get("/gmail/v1/users/{user_id}/messages", summary="users.messages.list")
    async def list_messages(request: Request, user_id: str) -> Response:
        header = request.headers.get("authorization", "")
        access = (
            state.valid_access_token(header[7:].strip())
            if header.lower().startswith("bearer ")
            else None
        )
        if access is None:
            return google_api_error(401, "authError")
        if not access.scopes & GMAIL_READ_SCOPES and not any(
            s.startswith(GMAIL_SCOPE_PREFIX) for s in access.scopes
        ):
            return google_api_error(
                403, "insufficientPermissions", "Request had insufficient authentication scopes."
            )
        owner = state.users[state.grants[access.grant_id].email]
        if user_id not in ("me", owner.email):
            return google_api_error(403, "forbidden", "Delegation denied for " + user_id)
        query = request.query_params
        try:
            max_results = int(query.get("maxResults", "100"))
        except ValueError:
            return google_api_error(400, "invalidArgument", "Invalid value for maxResults")
        if max_results < 1:
            return google_api_error(400, "invalidArgument", "Invalid value for maxResults")
        max_results = min(max_results, 500)
        q = query.get("q")
        label_ids = query.getlist("labelIds")
        include_spam_trash = query.get("includeSpamTrash", "false").lower() == "true"
        key = json.dumps(
            [owner.email, owner.mailbox_size, q, sorted(label_ids), include_spam_trash]
        )
        matches = state.searches.get(
            key,
            lambda: [
                m for m in owner.mailbox if compile_query(q, label_ids, include_spam_trash)(m)
            ],
        )
        offset = 0
        if query.get("pageToken"):
            try:
                offset = state.page_tokens.offset(key, query["pageToken"])
            except InvalidPageToken:
                return google_api_error(400, "invalidArgument", "Invalid pageToken")
        page = matches[offset : offset + max_results]
        body: dict[str, Any] = {}
        if page:
            body["messages"] = [message.as_list_entry() for message in page]
        if offset + max_results < len(matches):
            body["nextPageToken"] = state.page_tokens.issue(key, offset + max_results)
        body["resultSizeEstimate"] = len(matches)
        return JSONResponse(body)

    return router
