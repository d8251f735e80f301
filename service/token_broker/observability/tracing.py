"""OpenTelemetry traces: off unless the standard `OTEL_*` variables ask for them.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
and `OTEL_SDK_DISABLED` is not `true`. The OTLP protocol is
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`,
the specification's default, or `grpc`); every other standard variable (headers,
timeouts, certificates, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`) is read by the SDK itself.

With tracing off nothing is installed: no middleware, no SQL hooks, no spans, so
the hot path costs what it did. With tracing on, spans carry only what is named
here and in their call sites: route templates, methods, statuses, endpoint names,
hosts, parametrised SQL, error classes. Never a token, code, key, email, query
string or request body (the suite scans every span for them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib.metadata import version
from typing import Any

import sqlalchemy as sa
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

TRACER_NAME = "token_broker"
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")
_MAX_STATEMENT = 2000


class TracingConfigurationError(Exception):
    """`OTEL_*` values the broker cannot honour; one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Tracing:
    """Where spans go. `start()` (in the app's lifespan) builds the tracer; `shutdown()` flushes."""

    def __init__(
        self, make_exporters: Callable[[], Sequence[SpanExporter]], *, batch: bool = True
    ) -> None:
        self._make_exporters = make_exporters
        self._batch = batch
        self._provider: TracerProvider | None = None
        self.tracer: Tracer | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing | None:
        """Tracing as the `OTEL_*` variables configure it, or None when they do not ask for it."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        problems: list[str] = []
        named = [
            name.strip().lower()
            for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
            if name.strip()
        ]
        for name in named:
            if name not in EXPORTERS:
                problems.append(
                    f"OTEL_TRACES_EXPORTER: {name!r} is not supported; "
                    f"expected a comma-separated list of {', '.join(EXPORTERS)}"
                )
        endpoint_set = any(
            environ.get(variable)
            for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        exporters = [name for name in named if name != "none"] or (
            ["otlp"] if endpoint_set and not named else []
        )
        protocol_variable = (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        protocol = environ.get(protocol_variable, "").strip() or "http/protobuf"
        if "otlp" in exporters and protocol not in PROTOCOLS:
            problems.append(
                f"{protocol_variable}: {protocol!r} is not supported; expected one of "
                + ", ".join(PROTOCOLS)
            )
        if problems:
            raise TracingConfigurationError(problems)
        if not exporters:
            return None
        return cls(lambda: [_exporter(name, protocol) for name in exporters])

    @classmethod
    def to(cls, exporter: SpanExporter) -> Tracing:
        """Every span to `exporter` as it ends (tests, with an in-memory exporter)."""
        return cls(lambda: [exporter], batch=False)

    def start(self) -> Tracer:
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "token-broker"}))
        resource = resource.merge(Resource({SERVICE_VERSION: version("token-broker")}))
        provider = TracerProvider(resource=resource)
        for exporter in self._make_exporters():
            provider.add_span_processor(
                BatchSpanProcessor(exporter) if self._batch else SimpleSpanProcessor(exporter)
            )
        self._provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, version("token-broker"))
        return self.tracer

    def flush(self, timeout_seconds: float = 10.0) -> bool:
        """Export every finished span now; False if the exporters did not finish in time."""
        if self._provider is None:
            return True
        return self._provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self) -> None:
        """Export what is buffered, then stop (the lifespan's last step)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self.tracer = None


def _exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def span(
    tracer: Tracer | None,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    parent: Context | None = None,
) -> AbstractContextManager[Span | None]:
    """A child span of `parent` (default: whatever is current); nothing when tracing is off."""
    if tracer is None:
        return nullcontext()
    return _span(tracer, name, kind, attributes, parent)


@contextmanager
def _span(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, str | int | float | bool] | None,
    parent: Context | None,
) -> Iterator[Span]:
    # Exceptions are recorded by their code or kind (a problem code, a retry class) or
    # their class: their messages are not vetted for secrets, so never recorded.
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as current:  # fmt: skip
        try:
            yield current
        except BaseException as error:
            fail(current, error_type(error))
            raise


def error_type(error: BaseException) -> str:
    """What a span says of an exception: its problem `code`, its retry `kind`, or its class."""
    for attribute in ("code", "kind"):
        value = getattr(error, attribute, None)
        if isinstance(value, str) and value.isidentifier():
            return value
    return type(error).__name__


def fail(current: Span, error_type: str) -> None:
    """Mark a span failed with an error class (a problem code, an exception's class name)."""
    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR, error_type))


def trace_statements(engine: sa.Engine, tracer: Tracer, system: str) -> None:
    """A client span per SQL statement on `engine`: its operation and parametrised text.

    Statements are parametrised (values travel separately and are never recorded).
    """

    def before(
        _connection: Any, _cursor: Any, statement: str, _parameters: Any, context: Any, _many: bool
    ) -> None:
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        context._token_broker_span = tracer.start_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": system,
                "db.operation.name": operation,
                "db.query.text": statement[:_MAX_STATEMENT],
            },
        )

    def after(
        _connection: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool
    ) -> None:
        current = getattr(context, "_token_broker_span", None)
        if current is not None:
            current.end()
            context._token_broker_span = None

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        current = getattr(context, "_token_broker_span", None)
        if current is not None:
            fail(current, type(exception_context.original_exception).__name__)
            current.end()
            context._token_broker_span = None

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "handle_error", failed)
