"""The one definition of "now" for stored timestamps (timezone-aware UTC), and of how a
timestamp is written out: RFC 3339 in UTC with a `Z`, as the API's models write it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime, timespec: str = "auto") -> str:
    """`2026-11-21T06:30:00.123456Z`: every timestamp the broker writes (JSON, logs, CLI)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"
