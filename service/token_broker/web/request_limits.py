"""Request size limits, enforced before anything reads the request.

The query string, the header block and the body each have a ceiling; past it the
caller gets a 414, 431 or 413 problem and the broker reads no further.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from token_broker.errors import BrokerError, HeadersTooLarge, PayloadTooLarge, UriTooLong
from token_broker.web.problems import problem_response

MAX_QUERY_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await problem_response(refusal)(scope, receive, send)
            return
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge()  # the routes' problem handler answers it
            return message

        await self.app(scope, limited_receive, send)

    def _refusal(self, scope: Scope) -> BrokerError | None:
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            return UriTooLong()
        size = 0
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return PayloadTooLarge()
        if size > MAX_HEADER_BYTES:
            return HeadersTooLarge()
        return None
