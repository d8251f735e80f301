"""Spans leave the broker over OTLP, to a receiver built on OpenTelemetry's own protocol code.

The receiver decodes what arrives with `opentelemetry-proto` (OTLP's published
protobuf messages and gRPC service), over HTTP and over gRPC, as a collector would;
then everything it received is scanned for secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI, Request, Response
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.support.flow import Live
from tests.support.hygiene import KNOWN_SECRETS, SECRET_SHAPES
from tests.support.provider import Provider
from tests.support.servers import serve
from token_broker.observability.tracing import Tracing

ExportRequest = trace_service_pb2.ExportTraceServiceRequest


class HttpReceiver:
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.app = FastAPI()

        @self.app.post("/v1/traces")
        async def traces(request: Request) -> Response:
            assert request.headers["content-type"] == "application/x-protobuf"
            self.requests.append(ExportRequest.FromString(await request.body()))
            return Response(
                trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                media_type="application/x-protobuf",
            )


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def Export(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.asynccontextmanager
async def collector(protocol: str) -> AsyncIterator[tuple[str, list[Any]]]:
    """An OTLP receiver on a free loopback port: its endpoint, and what it received."""
    if protocol == "grpc":
        receiver = GrpcReceiver()
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"http://127.0.0.1:{port}", receiver.requests
        finally:
            await server.stop(grace=None)
        return
    http_receiver = HttpReceiver()
    async with serve(http_receiver.app, lifespan="off") as url:
        yield url, http_receiver.requests


def strings(request: Any) -> list[str]:
    """Every text an export request carries (ids are bytes, and left out)."""
    found: list[str] = []

    def values(attributes: Any) -> None:
        for attribute in attributes:
            found.append(attribute.key)
            value = attribute.value
            found.append(value.string_value)
            found.extend(item.string_value for item in value.array_value.values)

    for resource_spans in request.resource_spans:
        values(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found += [span.name, span.status.message, span.trace_state]
                values(span.attributes)
                for event in span.events:
                    found.append(event.name)
                    values(event.attributes)
                for link in span.links:
                    values(link.attributes)
    return found


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_reach_an_otlp_collector_and_carry_no_secret(
    protocol: str,
    provider: Provider,
    broker_factory: Any,
    settings_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with collector(protocol) as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "token-broker-under-test")
        tracing = Tracing.from_environment(os.environ)
        assert tracing is not None
        broker = await broker_factory(settings_factory(**provider.settings()), tracing=tracing)
        async with httpx.AsyncClient() as browser:
            live = Live(provider, broker, browser)
            assert (await live.connect()).status_code == 200
            headers = await live.headers()
            token = await broker.client.get(
                "/v1/accounts/alice@example.com/access-token",
                params={"force_refresh": "true"},
                headers=headers,
            )
            assert token.status_code == 200
            listed = await broker.client.get(
                "/v1/accounts/alice@example.com/messages",
                params={"q": "is:unread"},
                headers=headers,
            )
            assert listed.status_code == 200
            live.register_provider_secrets()
        # The exporter blocks its caller until the collector answers, and the collector
        # answers on this event loop: flush from another thread. Shutting down here, while
        # the collector still listens, leaves nothing for the broker's own shutdown to send.
        assert await asyncio.to_thread(tracing.flush)
        await asyncio.to_thread(tracing.shutdown)
    assert received, "the collector received nothing"
    names = set()
    services = set()
    for request in received:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                names.update(span.name for span in scope_spans.spans)
    assert services == {"token-broker-under-test"}
    assert {
        "GET /v1/oauth/callback",
        "GET /v1/accounts/{account}/access-token",
        "GET /v1/accounts/{account}/messages",
        "POST token",
        "GET gmail.messages.list",
        "SELECT",
    } <= names
    everything = "\n".join(text for request in received for text in strings(request))
    leaks = [secret[:6] for secret in KNOWN_SECRETS if secret and secret in everything]
    assert leaks == []
    assert SECRET_SHAPES.search(everything) is None
    assert "@" not in everything
    assert "is:unread" not in everything
