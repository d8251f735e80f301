"""Answers of a broker pinned with respx (the `broker_api` fixture), built the broker's way."""

from __future__ import annotations

import json
from typing import Any

import httpx

from token_broker_client import RetryPolicy

BROKER = "http://broker.test"
FAST = RetryPolicy(attempts=3, budget_seconds=5, backoff_seconds=0.01, max_backoff_seconds=0.02)


def problem(code: str, status: int, **extra: Any) -> httpx.Response:
    body = {"type": f"urn:token-broker:problem:{code}", "title": code, "status": status,
            "detail": f"{code} happened", "code": code, "request_id": "req-1", **extra}  # fmt: skip
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else {}
    return httpx.Response(
        status, json=body, headers={**headers, "content-type": "application/problem+json"}
    )


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
