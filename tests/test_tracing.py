"""Tracing: spans for requests, upstream calls and SQL; trace ids in logs and on webhooks; and
nothing secret in any span (an in-memory exporter, scanned like the logs)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr

from tests.support.flow import Live
from tests.support.hygiene import KNOWN_SECRETS, SECRET_SHAPES, register_secret
from tests.support.polling import eventually
from tests.support.provider import Provider
from tests.support.servers import Receiver, serve
from token_broker.app import create_app
from token_broker.observability.tracing import Tracing, TracingConfigurationError
from token_broker.web.request_tracing import RequestTracing

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def texts(span: ReadableSpan) -> Iterator[str]:
    """Every string a span carries to a collector."""
    yield span.name
    if span.status.description:
        yield span.status.description
    for attributes in (
        span.attributes,
        span.resource.attributes,
        *(event.attributes for event in span.events),
        *(link.attributes for link in span.links),
    ):
        for key, value in (attributes or {}).items():
            yield key
            yield from (str(item) for item in value) if isinstance(value, tuple) else [str(value)]
    yield from (event.name for event in span.events)


def scan_for_secrets(spans: list[ReadableSpan], *also: str) -> list[str]:
    found = []
    for span in spans:
        for text in texts(span):
            for secret in (*KNOWN_SECRETS, *also):
                if secret and secret in text:
                    found.append(f"{span.name}: {secret[:6]}…")
            if SECRET_SHAPES.search(text) or "@" in text:
                found.append(f"{span.name}: {text[:40]}")
    return found


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def server_span(spans: list[ReadableSpan], name: str, status: int) -> ReadableSpan:
    matches = [
        s for s in spans
        if s.kind == SpanKind.SERVER and s.name == name
        and s.attributes is not None and s.attributes["http.response.status_code"] == status
    ]  # fmt: skip
    assert matches, f"no {name} {status} among {[s.name for s in spans]}"
    return matches[-1]


async def test_a_whole_flow_traced_without_a_secret(
    provider: Provider, broker_factory: Any, settings_factory: Any, records: Records
) -> None:
    exporter = InMemorySpanExporter()
    receiver = Receiver()
    async with serve(receiver.app, lifespan="off") as hook_url, httpx.AsyncClient() as browser:
        broker = await broker_factory(
            settings_factory(
                **provider.settings(),
                webhook_url=f"{hook_url}/hook",
                webhook_secret=SecretStr(register_secret("whsec-tracing-secret")),
            ),
            tracing=Tracing.to(exporter),
        )
        live = Live(provider, broker, browser)
        connected = await live.connect("alice@example.com")
        assert connected.status_code == 200, connected.text
        headers = await live.headers()

        # A caller's trace continues through the broker.
        token = await broker.client.get(
            "/v1/accounts/alice@example.com/access-token",
            params={"force_refresh": "true"},
            headers={**headers, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
        assert token.status_code == 200
        register_secret(token.json()["access_token"])
        request_id = token.headers["x-request-id"]
        listed = await broker.client.get(
            "/v1/accounts/alice@example.com/messages",
            params={"q": "from:bob@example.com OR to:alice@example.com"},
            headers=headers,
        )
        assert listed.status_code == 200
        streamed = await broker.client.get(
            "/v1/accounts/alice@example.com/messages",
            headers={**headers, "Accept": "application/x-ndjson"},
        )
        assert json.loads(streamed.text.splitlines()[-1])["status"] == "complete"

        # A dead grant: the request fails, the webhook it causes carries its trace.
        provider.state.revoke_user("alice@example.com")
        revoked = await broker.client.get(
            "/v1/accounts/alice@example.com/access-token",
            params={"force_refresh": "true"},
            headers=headers,
        )
        assert revoked.status_code == 409
        await eventually(lambda: len(receiver.received) == 1, within=10)
        deleted = await broker.client.delete("/v1/accounts/alice@example.com", headers=headers)
        assert deleted.status_code == 200
        live.register_provider_secrets()
    spans = list(exporter.get_finished_spans())

    # One server span per request, named by its route; the caller's trace continued.
    served = server_span(spans, "GET /v1/accounts/{account}/access-token", 200)
    assert served.context is not None
    assert served.parent is not None
    assert f"{served.context.trace_id:032x}" == CALLER_TRACE
    assert f"{served.parent.span_id:016x}" == CALLER_SPAN
    assert served.attributes is not None
    assert served.attributes["http.route"] == "/v1/accounts/{account}/access-token"
    assert served.attributes["token_broker.request_id"] == request_id
    # Its children: the refresh at the token endpoint, and the database work.
    below = children(spans, served)
    refresh = [s for s in below if s.name == "POST token"]
    assert len(refresh) == 1
    assert refresh[0].kind == SpanKind.CLIENT
    assert refresh[0].attributes is not None
    assert refresh[0].attributes["http.response.status_code"] == 200
    assert refresh[0].attributes["server.address"] == "127.0.0.1"
    statements = [s for s in below if s.attributes and "db.system.name" in s.attributes]
    assert {s.name for s in statements} >= {"SELECT", "UPDATE"}
    assert all(s.context and s.context.trace_id == served.context.trace_id for s in below)

    # Listings: one span per Gmail page under the request's span, streamed ones included.
    for status in (200,):
        for listing in [
            s for s in spans if s.name == "GET /v1/accounts/{account}/messages"
        ]:  # fmt: skip
            assert listing.attributes is not None
            assert listing.attributes["http.response.status_code"] == status
            pages = [s for s in children(spans, listing) if s.name == "GET gmail.messages.list"]
            assert pages, "no Gmail page span under a listing"

    # The failed request: a 409 span, and the webhook delivery in its trace.
    failed = server_span(spans, "GET /v1/accounts/{account}/access-token", 409)
    assert failed.context is not None
    delivery = [
        s for s in spans
        if s.name == "POST webhook"
        and (s.attributes or {}).get("token_broker.webhook.event_type") == "account.revoked"
    ]  # fmt: skip
    assert len(delivery) == 1
    assert delivery[0].context is not None
    assert delivery[0].context.trace_id == failed.context.trace_id
    revoked = [
        headers for headers, body in receiver.received if b'"account.revoked"' in body
    ]  # fmt: skip
    traceparent = revoked[0]["traceparent"]
    assert traceparent.split("-")[1] == f"{failed.context.trace_id:032x}"
    assert traceparent.split("-")[2] == f"{delivery[0].context.span_id:016x}"
    upstream_failure = [
        s for s in children(spans, failed) if s.name == "POST token"
    ]  # fmt: skip
    assert upstream_failure
    assert upstream_failure[0].status.status_code == StatusCode.ERROR

    # Every log line of the traced request carries its trace id.
    lines = [r for r in records.records if getattr(r, "request_id", None) == request_id]
    assert lines, "the request logged nothing (the access line at least is expected)"
    assert all(getattr(r, "trace_id", None) == CALLER_TRACE for r in lines)

    # Nothing secret anywhere: tokens, codes, keys, secrets, emails, the search.
    assert scan_for_secrets(spans, "from:bob", "is:unread") == []


async def test_tracing_is_off_unless_configured(settings_factory: Any) -> None:
    app = create_app(settings_factory())
    assert all(m.cls is not RequestTracing for m in app.user_middleware)
    assert Tracing.from_environment({}) is None
    assert Tracing.from_environment({"OTEL_SERVICE_NAME": "broker"}) is None
    assert Tracing.from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert Tracing.from_environment(endpoint) is not None
    assert Tracing.from_environment({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert Tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"}) is not None


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
         "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317",
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)  # fmt: skip
def test_unsupported_otel_values_are_named(environ: dict[str, str], named: str) -> None:
    with pytest.raises(TracingConfigurationError) as raised:
        Tracing.from_environment(environ)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"{named}: ")
