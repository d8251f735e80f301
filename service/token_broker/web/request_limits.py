"""Request size limits, enforced before anything reads the request.

The query string, the header block and the body each have a ceiling; past it the
caller gets a 414, 431 or 413 problem and the broker reads no further. A body's
declared length is checked before it is read; a chunked body (no declared length) is
counted as it arrives, and answered 413 the moment it passes the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from token_broker.errors import BrokerError, HeadersTooLarge, PayloadTooLarge, UriTooLong
from token_broker.web.problems import problem_response

MAX_QUERY_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` past the limit. An HTTPException, because FastAPI re-raises
    those from body parsing (anything else there becomes a 400) and the problem handler
    renders 413 as `payload_too_large`."""

    def __init__(self) -> None:
        super().__init__(413)


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal, chunked = self._read_head(scope)
        if refusal is not None:
            await problem_response(refusal)(scope, receive, send)
            return
        if not chunked:
            # No body, or one of a declared length (checked above, and the server reads
            # no more than it declares): nothing to count.
            await self.app(scope, receive, send)
            return
        received = 0
        limit = self.max_body_bytes
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            # Read outside the routes' exception handling (a middleware, a raw route).
            if response_started:
                raise
            await problem_response(PayloadTooLarge())(scope, receive, send)

    def _read_head(self, scope: Scope) -> tuple[BrokerError | None, bool]:
        """The problem the request head already earns, if any; and whether its body is
        chunked (its length unknown until it has arrived)."""
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            return UriTooLong(), False
        size = 0
        chunked = False
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"content-length" and value.isdigit() and self._too_long(value):
                return PayloadTooLarge(), False
            if name == b"transfer-encoding":
                chunked = True
        if size > MAX_HEADER_BYTES:
            return HeadersTooLarge(), False
        return None, chunked

    def _too_long(self, digits: bytes) -> bool:
        # int() refuses strings past 4,300 digits; no body limit has 19.
        return len(digits.lstrip(b"0")) > 18 or int(digits) > self.max_body_bytes
