"""Faults switched on through the control API, and the call counters tests read."""

from __future__ import annotations

import asyncio

from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from google_sandbox.errors import google_api_error, oauth_error
from google_sandbox.oauth import AUTHORIZE_PATH
from google_sandbox.records import FaultRule
from google_sandbox.state import SandboxState

BATCH_PART = "sandbox.batch_part"  # scope key: a call dispatched from a batch request
_SYNC_ENDPOINTS: dict[tuple[str, ...], str] = {
    ("history",): "gmail.history.list",
    ("profile",): "gmail.getProfile",
    ("watch",): "gmail.watch",
    ("stop",): "gmail.stop",
}


def endpoint_of(path: str) -> str | None:
    if path in (AUTHORIZE_PATH, "/o/oauth2/auth"):
        return "authorize"
    if path in ("/token", "/revoke"):
        return path[1:]
    if path in ("/v1/userinfo", "/oauth2/v2/userinfo", "/oauth2/v3/userinfo"):
        return "userinfo"
    if path in ("/oauth2/v3/certs", "/oauth2/v1/certs"):
        return "jwks"
    if path == "/.well-known/openid-configuration":
        return "discovery"
    if path.startswith("/gmail/v1/users/"):
        resource = path.split("/")[5:]
        if resource == ["messages"]:
            return "gmail.messages.list"
        if len(resource) == 2 and resource[0] == "messages":
            return "gmail.messages.get"
        return _SYNC_ENDPOINTS.get(tuple(resource))
    if path == "/batch/gmail/v1":
        return "gmail.batch"
    return None


def _fault_response(rule: FaultRule, endpoint: str) -> Response:
    headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
    if endpoint.startswith("gmail"):
        response: Response = google_api_error(rule.status, rule.reason)
    elif rule.status >= 500:
        response = oauth_error(rule.status, "internal_failure", "Internal error.")
    elif rule.status == 429:
        response = oauth_error(429, "rate_limit_exceeded", "Rate limit exceeded.")
    else:
        response = oauth_error(rule.status, rule.reason or "invalid_request")
    response.headers.update(headers)
    return response


class FaultsAndCounters:
    """Counts every call to a provider endpoint and applies the faults switched on for it."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = (
            scope["path"][len(root) :] if root and scope["path"].startswith(root) else scope["path"]
        )
        endpoint = endpoint_of(path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            rule = self.state.fault_for(endpoint)
            if rule is not None and rule.kind in ("latency", "hang"):
                # A batch's calls share the batch's own latency (they run in parallel).
                if not scope.get(BATCH_PART):
                    delay = rule.delay if rule.kind == "latency" else rule.delay or 3600
                    await asyncio.sleep(delay)
                rule = None
            elif rule is not None and rule.kind == "revoke":
                self.state.revoke_user(rule.reason or "")
                rule = None
            if rule is None:
                await self.app(scope, receive, counting_send)
            elif rule.kind == "drop":
                # Promise a body, send part of it, and give up: the client sees the
                # connection close mid-response.
                await counting_send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", b"4096"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"access', "more_body": True})
            elif rule.kind == "raw":
                raw = Response(
                    rule.reason or "", status_code=rule.status, media_type=rule.content_type
                )
                await raw(scope, receive, counting_send)
            else:
                await _fault_response(rule, endpoint)(scope, receive, counting_send)
        finally:
            self.state.record(endpoint, status)
