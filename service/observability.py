"""Logging (JSON in production, readable in dev), request ids, and secret redaction."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("token_broker.http")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _request_id_sequence() -> Iterator[str]:
    # Unique, not secret: a random per-process prefix and a counter (uuid4 per request
    # was a measurable share of the hot path).
    prefix = secrets.token_hex(8)
    for number in itertools.count(1):
        yield f"{prefix}{number:016x}"


_request_ids = _request_id_sequence()


def current_request_id() -> str | None:
    return _request_id.get()


# Secrets the broker handles, by shape: Google access tokens (ya29.), refresh tokens
# (1//), JWTs (ID tokens), our API keys (tbk_), Bearer credentials, and any value of a
# field whose name says it is secret. The filter backs up the rule that code never logs
# secrets; it is not the rule itself.
_SECRET_SHAPES = re.compile(
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
    text = _SECRET_SHAPES.sub(REDACTED, text)
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


def install_request_id_on_records() -> None:
    """Stamp every log record with the current request id, whoever handles it (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stamps_request_id", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = _request_id.get()
        return record

    make_record.stamps_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    "sanitized",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
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
        context = "".join(f" {k}={v}" for k, v in extras.items() if k != "context")
        record.context = (f" [{request_id}]" if request_id else "") + context
        return super().format(record)


def configure_logging(level: str, log_format: str) -> None:
    """Route every log record (ours, uvicorn's, libraries') through one redacting handler."""
    install_request_id_on_records()
    handler = logging.StreamHandler(sys.stderr)
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


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    """Request id in and out, one access line per request, and a 500 problem for the unexpected.

    A pure ASGI middleware: the hot path pays for a context variable and a header, not
    for a `BaseHTTPMiddleware` task per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool,
        error_response: Callable[[], ASGIApp],
        on_response: Callable[[Scope, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.error_response = error_response
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else next(_request_ids)
        )
        token = _request_id.set(request_id)
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
                self.on_response(scope, status, elapsed)
            if self.access_log:
                # The path is the caller's text (a token pasted into a URL must not
                # reach the log); the query is left out (the callback's holds a code).
                path = _SECRET_SHAPES.sub(REDACTED, scope.get("path", ""))
                log.info(
                    "%s %s %d",
                    scope.get("method"),
                    path,
                    status,
                    extra={"duration_ms": round(elapsed * 1000, 2), "sanitized": True},
                )
            _request_id.reset(token)
