"""Gmail's sync and push methods: `users.history.list`, `users.getProfile`, `users.watch`,
`users.stop`.

Shapes and rules are in `history.py` (history records, their expiry and filters) and
`pubsub.py` (watches and push deliveries), each with its sources. Scopes are the
methods' own in gmail.v1.json: history.list, watch and stop take mail.google.com,
gmail.modify, gmail.readonly or gmail.metadata; getProfile also gmail.compose. An
empty history page has no `history` key at all (`{'historyId': '1710'}`,
googleworkspace/python-samples#200). Malformed parameters answer 400 as Gmail's gRPC
transcoding words them ("Invalid value at 'start_history_id' (TYPE_UINT64)"); the wording
of the 400s for a missing startHistoryId and a malformed topicName is the sandbox's own.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from google_sandbox.errors import google_api_error
from google_sandbox.gmail_access import gmail_caller
from google_sandbox.history import HISTORY_TYPES, HistoryNotFound, check_labels
from google_sandbox.mailbox import InvalidPageToken
from google_sandbox.records import SandboxUser
from google_sandbox.scopes import GMAIL, MESSAGES_LIST_SCOPES
from google_sandbox.state import SandboxState

HISTORY_SCOPES = MESSAGES_LIST_SCOPES
PROFILE_SCOPES = MESSAGES_LIST_SCOPES | {GMAIL + "compose"}
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_METHODS = "caribou.api.proto.MailboxService."


def _invalid(field: str, kind: str, value: str) -> JSONResponse:
    return google_api_error(
        400, "invalidArgument", f"Invalid value at '{field}' ({kind}), \"{value}\""
    )


def current_history(state: SandboxState, user: SandboxUser) -> int:
    """The mailbox's current history id, after forgetting what has expired."""
    history = user.history
    history.expire(state.history_retention_seconds)
    return history.current


def sync_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.get("/gmail/v1/users/{user_id}/history", summary="users.history.list")
    async def list_history(request: Request, user_id: str) -> Response:
        caller = gmail_caller(
            state, request, user_id, method=_METHODS + "ListHistory", accepted=HISTORY_SCOPES
        )
        if isinstance(caller, JSONResponse):
            return caller
        query = request.query_params
        start_text = query.get("startHistoryId")
        if not start_text:
            return google_api_error(400, "invalidArgument", "startHistoryId is required")
        if not start_text.isdigit():
            return _invalid("start_history_id", "TYPE_UINT64", start_text)
        max_text = query.get("maxResults", "100")
        if not max_text.isdigit():
            return _invalid("max_results", "TYPE_UINT32", max_text)
        types = query.getlist("historyTypes")
        for position, kind in enumerate(types):
            if kind not in HISTORY_TYPES:
                return _invalid(f"history_types[{position}]", "TYPE_ENUM", kind)
        label_id = query.get("labelId") or None
        if label_id and check_labels([label_id]):
            return google_api_error(400, "invalidArgument", f"Invalid label: {label_id}")
        start = int(start_text)
        key = json.dumps([caller.user.email, start, label_id, sorted(types)])
        after = None
        if query.get("pageToken"):
            try:
                after = state.page_tokens.offset(key, query["pageToken"])
            except InvalidPageToken:
                return google_api_error(400, "invalidArgument", "Invalid pageToken")
        current = current_history(state, caller.user)
        try:
            page, more = caller.user.history.records(
                start,
                after=after,
                label_id=label_id,
                types=frozenset(types or HISTORY_TYPES),
                limit=max(1, min(int(max_text), 500)),
            )
        except HistoryNotFound:
            return google_api_error(404, "notFound", "Requested entity was not found.")
        body: dict[str, Any] = {}
        if page:
            body["history"] = [record.as_resource() for record in page]
        if more:
            body["nextPageToken"] = state.page_tokens.issue(key, page[-1].id)
        body["historyId"] = str(current)
        return JSONResponse(body)

    @router.get("/gmail/v1/users/{user_id}/profile", summary="users.getProfile")
    async def get_profile(request: Request, user_id: str) -> Response:
        caller = gmail_caller(
            state, request, user_id, method=_METHODS + "GetProfile", accepted=PROFILE_SCOPES
        )
        if isinstance(caller, JSONResponse):
            return caller
        mailbox = caller.user.mailbox
        return JSONResponse(
            {
                "emailAddress": caller.user.email,
                "messagesTotal": len(mailbox),
                "threadsTotal": len({message.thread_id for message in mailbox}),
                "historyId": str(current_history(state, caller.user)),
            }
        )

    @router.post("/gmail/v1/users/{user_id}/watch", summary="users.watch")
    async def watch(request: Request, user_id: str) -> Response:
        caller = gmail_caller(
            state, request, user_id, method=_METHODS + "Watch", accepted=HISTORY_SCOPES
        )
        if isinstance(caller, JSONResponse):
            return caller
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return google_api_error(400, "invalidArgument", "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return google_api_error(400, "invalidArgument", "Invalid JSON payload received.")
        topic = body.get("topicName")
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            return google_api_error(
                400, "invalidArgument", "Invalid topicName does not match projects/*/topics/*"
            )
        if topic not in state.pubsub.config.topics:
            message = (
                f"Error sending test message to Cloud PubSub {topic} : "
                "User not authorized to perform this action."
            )
            return google_api_error(403, "forbidden", message)
        label_ids = body.get("labelIds") or []
        if not isinstance(label_ids, list) or not all(isinstance(x, str) for x in label_ids):
            return google_api_error(400, "invalidArgument", "Invalid labelIds")
        unknown = check_labels(label_ids)
        if unknown:
            return google_api_error(400, "invalidArgument", f"Invalid label: {unknown[0]}")
        # labelFilterBehavior replaces the deprecated labelFilterAction (gmail.v1.json).
        behavior = str(
            body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include"
        ).lower()
        if behavior not in ("include", "exclude"):
            return _invalid("label_filter_behavior", "TYPE_ENUM", behavior)
        chosen: Literal["include", "exclude"] = "include" if behavior == "include" else "exclude"
        registered = state.pubsub.watch(caller.user.email, topic, frozenset(label_ids), chosen)
        return JSONResponse(
            {
                "historyId": str(current_history(state, caller.user)),
                "expiration": str(int(registered.expires_at * 1000)),
            }
        )

    @router.post("/gmail/v1/users/{user_id}/stop", summary="users.stop", status_code=204)
    async def stop(request: Request, user_id: str) -> Response:
        caller = gmail_caller(
            state, request, user_id, method=_METHODS + "Stop", accepted=HISTORY_SCOPES
        )
        if isinstance(caller, JSONResponse):
            return caller
        state.pubsub.stop(caller.user.email)
        return Response(status_code=204)

    return router
