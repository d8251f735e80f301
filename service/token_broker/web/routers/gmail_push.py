"""Gmail push notifications, as Cloud Pub/Sub delivers them (`services/gmail_push.py`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from token_broker.errors import (
    DatabaseUnavailable,
    InvalidPush,
    PushNotConfigured,
    PushUnauthenticated,
)
from token_broker.web.dependencies import State
from token_broker.web.problems import problem_responses

router = APIRouter(prefix="/v1/gmail", tags=["gmail push"])

_DESCRIPTION = """
The push endpoint of the Cloud Pub/Sub subscription Gmail publishes to (set it up as the
README's "Gmail push" section says). Not for API clients: it takes no API key, but the
OIDC token Pub/Sub signs (`Authorization: Bearer <JWT>`), checked against Google's keys,
issuer, `TOKEN_BROKER_GMAIL_PUSH_AUDIENCE`, `TOKEN_BROKER_GMAIL_PUSH_SERVICE_ACCOUNT` and
its expiry; a message id seen before with the same token is a replay.

204 acknowledges: a change recorded (a `mailbox.changed` webhook follows when the
account's coalescing window closes), Pub/Sub delivering a message again, or an address
no account has (dropped, so Pub/Sub does not retry it for days). 401 and 400 make
Pub/Sub retry.
"""

_ENVELOPE = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {
            "type": "object",
            "required": ["data", "messageId"],
            "properties": {
                "data": {
                    "type": "string",
                    "description": 'base64 of {"emailAddress": ..., "historyId": ...}',
                },
                "messageId": {"type": "string"},
                "publishTime": {"type": "string"},
                "attributes": {"type": "object"},
            },
        },
        "subscription": {"type": "string"},
    },
}


@router.post(
    "/push",
    status_code=204,
    summary="Gmail push notifications from Cloud Pub/Sub (its push subscription calls this)",
    description=_DESCRIPTION,
    responses=problem_responses(
        InvalidPush, PushUnauthenticated, PushNotConfigured, DatabaseUnavailable
    ),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ENVELOPE}}}
    },
)
async def receive_push(request: Request, state: State) -> Response:
    if state.push is None:
        raise PushNotConfigured()
    await state.push.receive(request.headers.get("authorization"), await request.body())
    return Response(status_code=204)
