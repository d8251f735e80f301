"""Logging: JSON in production, readable in dev, every record stamped with its request id
(and, when tracing is on, its trace and span ids) and passed through secret redaction."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from typing import Any

from opentelemetry.trace import format_span_id, format_trace_id, get_current_span

from token_broker.observability.request_ids import current_request_id

# Secrets the broker handles, by shape: Google access tokens (ya29.), refresh tokens
# (1//), JWTs (ID tokens), our API keys (tbk_), Bearer credentials, and any value of a
# field whose name says it is secret. The filter backs up the rule that code never logs
# secrets; it is not the rule itself.
SECRET_SHAPES = re.compile(
    r"ya29\.[\w.-]+"
    r"|1//[\w.-]+"
    r"|eyJ[\w-]*\.[\w-]*\.[\w-]*"
    r"|tbk_[\w-]+"
    r"|(?i:bearer)\s+[\w.~+/=-]+"
)
_SECRET_FIELDS = re.compile(
    r"(?i)(\"?\b(?:access_token|refresh_token|id_token|client_secret|code_verifier|code"
    r"|authorization|api_key|password|secret|token)\b\"?\s*[:=]\s*\"?)([^\"&\s,;}]+)"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    text = SECRET_SHAPES.sub(REDACTED, text)
    return _SECRET_FIELDS.sub(lambda match: match.group(1) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Masks token-shaped text in every record passing through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "sanitized", False):
            return True  # composed by the broker from values it already redacted
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class ExplainedStartupFailures(logging.Filter):
    """Drops the server's traceback of a start refused for configuration.

    The app logged the reason in one line per problem before raising; uvicorn then
    prints the whole traceback of that ConfigurationError, which says nothing more.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.error" or record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        return not (text.startswith("Traceback") and "ConfigurationError: " in text)


def install_request_id_on_records() -> None:
    """Stamp every log record with the current request id, whoever handles it (idempotent).

    Inside a span (tracing on) the record also gets `trace_id` and `span_id`, so every
    line of a request can be found from its trace and the other way round.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stamps_request_id", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = current_request_id()
        span = get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format_trace_id(span.trace_id)
            record.span_id = format_span_id(span.span_id)
        return record

    make_record.stamps_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "trace_id",
    "span_id",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    "sanitized",
}


def _utc_timestamp(record: logging.LogRecord) -> str:
    # RFC 3339 with `Z`, the form of every timestamp the broker writes (kit.clock.rfc3339).
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
        request_id = getattr(record, "request_id", None)
        trace_id = getattr(record, "trace_id", None)
        context = "".join(f" {k}={v}" for k, v in extras.items() if k != "context")
        record.context = (
            (f" [{request_id}]" if request_id else "")
            + (f" trace_id={trace_id}" if trace_id else "")
            + context
        )
        return super().format(record)


def configure_logging(level: str, log_format: str) -> None:
    """Route every log record (ours, uvicorn's, libraries') through one redacting handler."""
    install_request_id_on_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ExplainedStartupFailures())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log prints query strings, and the OAuth callback's query holds an
    # authorization code; the broker writes its own access line without the query.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
