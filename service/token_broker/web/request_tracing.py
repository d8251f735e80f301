"""One server span per HTTP request, continuing the caller's `traceparent`.

Installed only when tracing is on (`observability/tracing.py`). It wraps the
request context, so the access line and every other log line of the request carry
the span's trace id. The span is named by the route template and method; it
never records the path (it holds an account's email), the query (the callback's
holds a code) or any header value.
"""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from token_broker.observability.tracing import Tracing, error_type, fail
from token_broker.web.request_context import route_template

_PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


class RequestTracing:
    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = self.tracing.tracer
        if scope["type"] != "http" or tracer is None:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name in _PROPAGATION_HEADERS
        }
        method = str(scope.get("method", ""))
        with tracer.start_as_current_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.scheme": str(scope.get("scheme", "http")),
                "network.protocol.version": str(scope.get("http_version", "1.1")),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                    for name, value in message.get("headers", ()):
                        if name == b"x-request-id":
                            span.set_attribute("token_broker.request_id", value.decode("latin-1"))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            except Exception as error:
                fail(span, error_type(error))
                raise
            finally:
                route = route_template(scope)
                span.set_attribute("http.route", route)
                if route != "unmatched":
                    span.update_name(f"{method} {route}")
