"""Sending one upstream request on the shared client, and classifying how it failed.

Transient failures (timeouts, connection errors, 408, 429, 5xx) become
`TransientError` with the provider's Retry-After; everything else is returned for
the caller to interpret. Nothing here logs or raises request or response bodies.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry.trace import SpanKind, Tracer

from token_broker.kit.retry import TransientError
from token_broker.observability.tracing import fail, span

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# Called after every upstream exchange with (endpoint, status or error kind, seconds).
UpstreamObserver = Callable[[str, str, float], None]


class UpstreamProtocolError(Exception):
    """The provider answered with something that is not the documented shape."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise UpstreamProtocolError(
            f"HTTP {response.status_code} with a body that is not JSON"
        ) from None
    if not isinstance(body, dict):
        raise UpstreamProtocolError(f"HTTP {response.status_code} with a JSON body not an object")
    return body


class Upstream:
    """The shared httpx client plus the broker's rules for reading upstream failures.

    With tracing on, each exchange is a client span named by method and endpoint
    (`POST token`, `GET gmail.messages.list`): host, status and error class only,
    never the URL (Gmail's carries the caller's search) or a body.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        observer: UpstreamObserver | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self.http = http
        self.observer = observer
        self.tracer = tracer

    async def send(self, endpoint: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with span(self.tracer, f"{method} {endpoint}", kind=SpanKind.CLIENT) as current:
            if current is not None:
                target = httpx.URL(url)
                current.set_attributes({
                    "http.request.method": method, "server.address": target.host,
                    "server.port": target.port or (443 if target.scheme == "https" else 80),
                    "token_broker.upstream.endpoint": endpoint,
                })  # fmt: skip
            started = time.perf_counter()
            outcome = "error"
            try:
                response = await self.http.request(method, url, **kwargs)
                outcome = str(response.status_code)
            except httpx.TimeoutException:
                outcome = "timeout"
                raise TransientError(f"{endpoint}: timeout", kind="timeout") from None
            except httpx.TransportError as error:
                outcome = "connection_error"
                raise TransientError(
                    f"{endpoint}: {type(error).__name__}", kind="connection_error"
                ) from None
            finally:
                if self.observer is not None:
                    self.observer(endpoint, outcome, time.perf_counter() - started)
            if current is not None:
                current.set_attribute("http.response.status_code", response.status_code)
            if response.status_code in TRANSIENT_STATUSES:
                raise TransientError(
                    f"{endpoint}: HTTP {response.status_code}",
                    kind="rate_limited" if response.status_code == 429 else "server_error",
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                )
            if current is not None and response.status_code >= 400:
                fail(current, str(response.status_code))
            return response
