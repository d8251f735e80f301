"""Gmail's `users.messages.list`, over each user's seeded mailbox.

Facts (checked against public sources):

- A token without one of the method's scopes (gmail.v1.json: mail.google.com,
  gmail.modify, gmail.readonly, gmail.metadata) gets 403 "Request had insufficient
  authentication scopes." with errors[0] `insufficientPermissions` "Insufficient
  Permission", `error.details` holding a google.rpc.ErrorInfo with reason
  ACCESS_TOKEN_SCOPE_INSUFFICIENT, domain googleapis.com and the service and method in
  its metadata (googleworkspace/php-samples#123), and a `WWW-Authenticate: Bearer
  realm="https://accounts.google.com/", error="insufficient_scope", scope="…"` header
  naming the scopes that would do (anthonyjgrove/react-google-login#548,
  googleworkspace/apps-script-oauth2#172).
- A `labelIds` value that is not a label of the mailbox: 400 `invalidArgument` "Invalid
  label: <id>" (GAM-team/got-your-back#135; label ids are not label names, developers'
  guide "list messages"). System label ids are INBOX, SPAM, TRASH, UNREAD, STARRED,
  IMPORTANT, SENT, DRAFT, CHAT and the CATEGORY_* ids (googleworkspace/php-samples#123).
- A bad `pageToken`: 400 `invalidArgument` "Invalid pageToken", in both messages
  (dacastro4/laravel-gmail#121).
- With the gmail.metadata scope among the token's scopes, any `q` is refused: 403
  `forbidden` "Metadata scope does not support 'q' parameter", even beside broader
  scopes (googleapis/google-api-python-client#582, googleworkspace/cli#200).
- `resultSizeEstimate` is "an estimated total number of results" (developers' guide,
  "List Gmail messages"), not a count: measured in 2026 it answered 201 for every
  non-empty query whatever matched (3, 6, 9, 21 messages; at maxResults 1, 10 and 100;
  openclaw/gogcli#983) and "201 ... whether four messages match or four thousand"
  (huacnlee/omamail#188), 0 when nothing matches. The sandbox answers the same, so
  nothing built on it can mistake the estimate for a count.
- `maxResults` defaults to 100 and is at most 500 (gmail.v1.json).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from google_sandbox import fields
from google_sandbox.errors import google_api_error
from google_sandbox.gmail_access import gmail_caller
from google_sandbox.mailbox import LABEL_IDS, InvalidPageToken, compile_query
from google_sandbox.scopes import GMAIL_METADATA, MESSAGES_LIST_SCOPES
from google_sandbox.state import SandboxState

NONEMPTY_ESTIMATE = 201
_LIST_METHOD = "caribou.api.proto.MailboxService.ListMessages"


def gmail_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.get("/gmail/v1/users/{user_id}/messages", summary="users.messages.list")
    async def list_messages(request: Request, user_id: str) -> Response:
        caller = gmail_caller(
            state, request, user_id, method=_LIST_METHOD, accepted=MESSAGES_LIST_SCOPES
        )
        if isinstance(caller, JSONResponse):
            return caller
        owner = caller.user
        query = request.query_params
        if "q" in query and GMAIL_METADATA in caller.scopes:
            return google_api_error(
                403, "forbidden", "Metadata scope does not support 'q' parameter"
            )
        try:
            selection = fields.parse(query.get("fields", ""))
            fields.check(selection, fields.LIST_MESSAGES_SCHEMA)
        except fields.InvalidFieldSelection as invalid:
            return google_api_error(400, "invalidParameter", str(invalid))
        try:
            max_results = int(query.get("maxResults", "100"))
        except ValueError:
            return google_api_error(400, "invalidArgument", "Invalid value for maxResults")
        if max_results < 1:
            return google_api_error(400, "invalidArgument", "Invalid value for maxResults")
        max_results = min(max_results, 500)
        q = query.get("q")
        label_ids = query.getlist("labelIds")
        for label_id in label_ids:
            if label_id not in LABEL_IDS:
                return google_api_error(400, "invalidArgument", f"Invalid label: {label_id}")
        include_spam_trash = query.get("includeSpamTrash", "false").lower() == "true"
        key = json.dumps(
            [owner.email, owner.mailbox_size, q, sorted(label_ids), include_spam_trash]
        )
        # Page tokens stay good while the mailbox changes, as Gmail's do; results do not.
        matches = state.searches.get(
            f"{key}#{owner.mailbox_version}",
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
        body["resultSizeEstimate"] = NONEMPTY_ESTIMATE if matches else 0
        return JSONResponse(fields.apply(selection, body))

    return router
