"""Request ids: one per request, carried in a context variable to logs, problems and audit."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar, Token

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


def begin_request(incoming: str | None) -> tuple[str, Token[str | None]]:
    """Adopt the caller's X-Request-Id when sane, else mint one; returns it and a reset token."""
    request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else next(_request_ids)
    return request_id, _request_id.set(request_id)


def end_request(token: Token[str | None]) -> None:
    _request_id.reset(token)
