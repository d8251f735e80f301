"""Request id in and out, an access line and metrics per request, a 500 problem for the unexpected.

A pure ASGI middleware: the hot path pays for a context variable and a header, not
for a `BaseHTTPMiddleware` task per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from token_broker.observability.logs import REDACTED, SECRET_SHAPES
from token_broker.observability.request_ids import begin_request, end_request

log = logging.getLogger("token_broker.http")


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def route_template(scope: Scope) -> str:
    """The matched route's template (`/v1/accounts/{account}/...`): never the caller's text."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool,
        error_response: Callable[[], ASGIApp],
        on_response: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.error_response = error_response
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, token = begin_request(header(scope, b"x-request-id"))
        started = time.perf_counter()
        status = 500
        response_started = False
        header_value = request_id.encode()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", header_value)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except ClientDisconnect:
            log.info("client went away mid-response", extra={"path": scope.get("path")})
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if not response_started:
                await self.error_response()(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            if self.on_response is not None:
                self.on_response(
                    route_template(scope), str(scope.get("method", "")), status, elapsed
                )
            if self.access_log:
                # The path is the caller's text (a token pasted into a URL must not
                # reach the log); the query is left out (the callback's holds a code).
                path = SECRET_SHAPES.sub(REDACTED, scope.get("path", ""))
                log.info(
                    "%s %s %d",
                    scope.get("method"),
                    path,
                    status,
                    extra={"duration_ms": round(elapsed * 1000, 2), "sanitized": True},
                )
            end_request(token)
