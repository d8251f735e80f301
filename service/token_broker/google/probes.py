"""`token-broker check` asks each upstream whether it answers, and says which URL it tried.

One request each, no retries: the token endpoint (an empty request is refused, but
any answer proves it is there), the signing keys (must be a 200), and Gmail (an
unauthenticated listing answers 401 at Google and in the sandbox).
"""

from __future__ import annotations

from dataclasses import dataclass

from token_broker.google.discovery import ProviderEndpoints
from token_broker.google.transport import Upstream
from token_broker.kit.retry import TransientError


@dataclass(frozen=True)
class Probe:
    name: str
    url: str
    problem: str | None
    answer: str = ""


async def probe_upstreams(upstream: Upstream, endpoints: ProviderEndpoints) -> list[Probe]:
    gmail = f"{endpoints.gmail_api_base}/gmail/v1/users/me/messages"
    return [
        await _probe(upstream, "provider token endpoint", "token", "POST", endpoints.token_uri),
        await _probe(upstream, "provider signing keys", "jwks", "GET", endpoints.jwks_uri, ok=200),
        await _probe(upstream, "Gmail", "gmail.messages.list", "GET", gmail),
    ]


async def _probe(
    upstream: Upstream, name: str, endpoint: str, method: str, url: str, *, ok: int | None = None
) -> Probe:
    try:
        response = await upstream.send(endpoint, method, url, data={} if method == "POST" else None)
    except TransientError as error:
        reason = error.reason.partition(": ")[2] or error.reason
        what = "unreachable" if error.kind in ("timeout", "connection_error") else "answered"
        return Probe(name, url, f"{url} {what} ({reason})")
    if ok is not None and response.status_code != ok:
        return Probe(name, url, f"{url} answered HTTP {response.status_code}, expected {ok}")
    return Probe(name, url, None, f"HTTP {response.status_code}")
