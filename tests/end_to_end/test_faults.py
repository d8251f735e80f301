"""Upstream faults, case by case, against the sandbox provider on loopback.

For the token endpoint (refresh and code exchange) and for Gmail: timeouts,
connection resets, 500/502/503, 429 with and without Retry-After, malformed JSON,
an HTML error page, an empty body, a 200 without an access token. Each must give a
documented problem, a bounded number of upstream attempts, and no change to the
stored grant. Backoff sleeps are recorded, not slept.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from google_sandbox.records import FaultRule
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from token_broker.store.models import Account

ATTEMPTS = 3
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"

# fault id -> (rule fields, what kind of failure it is)
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "timeout": ({"kind": "hang", "delay": 1.5}, "transient"),
    "connection-reset": ({"kind": "drop"}, "transient"),
    "500": ({"status": 500}, "transient"),
    "502": ({"status": 502}, "transient"),
    "503": ({"status": 503}, "transient"),
    "429-retry-after": ({"status": 429, "retry_after": 2}, "rate"),
    "429-bare": ({"status": 429}, "rate"),
    "malformed-json": ({"kind": "raw", "status": 200, "reason": '{"access_token": ',
                        "content_type": "application/json"}, "garbled"),
    "html-error-page": ({"kind": "raw", "status": 502, "reason": HTML}, "transient"),
    "html-200": ({"kind": "raw", "status": 200, "reason": HTML}, "garbled"),
    "empty-body": ({"kind": "raw", "status": 200, "reason": ""}, "garbled"),
    "no-access-token": ({"kind": "raw", "status": 200, "content_type": "application/json",
                         "reason": '{"token_type": "Bearer", "expires_in": 3599}'}, "garbled"),
}  # fmt: skip


@pytest.fixture
def live_settings() -> dict[str, Any]:
    return {
        "http_timeout_seconds": 0.3,
        "refresh_attempts": ATTEMPTS,
        "refresh_budget_seconds": 60,
        "refresh_lease_seconds": 70,
        "refresh_cooldown_seconds": 0,
        "gmail_attempts": ATTEMPTS,
        "gmail_budget_seconds": 60,
    }


@pytest.fixture
def waits(live: Live) -> list[float]:
    """Backoff waits, recorded instead of slept."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    live.broker.state.tokens.sleep = record
    live.broker.state.listing.sleep = record
    return recorded


async def connected(live: Live) -> str:
    assert (await live.connect()).status_code == 200
    live.provider.state.calls.clear()
    return str(live.provider.state.users["alice@example.com"].sub)


async def stored(live: Live) -> Account:
    async with live.broker.state.database.transaction() as session:
        return (await session.exec(select(Account))).one()


def inject(live: Live, endpoint: str, fault: str) -> FaultRule:
    """Switch the fault on; the rule counts the calls that reached the endpoint."""
    fields, _ = FAULTS[fault]
    rule = FaultRule(endpoint, **fields)
    live.provider.state.faults.append(rule)
    return rule


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_refresh(live: Live, waits: list[float], fault: str) -> None:
    subject = await connected(live)
    before = await stored(live)
    rule = inject(live, "token", fault)
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/access-token",
        params={"force_refresh": "true"},
        headers=await live.headers(),
    )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert rule.seen == ATTEMPTS
    if fault == "429-retry-after":
        assert all(wait >= 2 for wait in waits)
    after = await stored(live)
    assert (after.status, after.refresh_token) == (before.status, before.refresh_token)


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_code_exchange(live: Live, waits: list[float], fault: str) -> None:
    started = await live.start(return_to="https://app.example/connected")
    answer = await live.consent(started["authorization_url"])
    rule = inject(live, "token", fault)
    response = await live.callback(answer)
    _, kind = FAULTS[fault]
    expected = "upstream_error" if kind == "garbled" else "upstream_unavailable"
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"https://app.example/connected?authorization={started['id']}&status=failed&error={expected}"
    )
    assert rule.seen == 1  # a code is single use: never retried
    async with live.broker.state.database.transaction() as session:
        assert (await session.exec(select(Account))).all() == []


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "no-access-token"])
async def test_gmail_listing(live: Live, waits: list[float], fault: str) -> None:
    subject = await connected(live)
    before = await stored(live)
    rule = inject(live, "gmail.messages.list", fault)
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/messages", headers=await live.headers()
    )
    _, kind = FAULTS[fault]
    status, code = (
        (429, "upstream_rate_limited") if kind == "rate" else (503, "upstream_unavailable")
    )
    assert response.status_code == status
    assert response.json()["code"] == code
    assert int(response.headers["retry-after"]) >= 1
    assert rule.seen == ATTEMPTS
    if fault == "429-retry-after":
        assert response.headers["retry-after"] == "2"
        assert all(wait >= 2 for wait in waits)
    after = await stored(live)
    assert (after.status, after.refresh_token) == (before.status, before.refresh_token)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(-5, (590, 600)), (0, (590, 600)), (10**12, (86_300, 86_400)), ("soon", None)],
)
async def test_absurd_expires_in(
    live: Live, waits: list[float], expires_in: Any, lifetime: tuple[int, int] | None
) -> None:
    subject = await connected(live)
    before = await stored(live)
    body = f'{{"access_token": "ya29.absurd-{expires_in}", "token_type": "Bearer", "expires_in": {expires_in!r}}}'.replace(
        "'", '"'
    )
    register_secret(f"ya29.absurd-{expires_in}")
    inject_raw = FaultRule(
        "token", kind="raw", status=200, reason=body, content_type="application/json"
    )
    live.provider.state.faults.append(inject_raw)
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/access-token",
        params={"force_refresh": "true"},
        headers=await live.headers(),
    )
    if lifetime is None:  # not a number: garbled, retried, then 503
        assert response.status_code == 503
        after = await stored(live)
        assert after.refresh_token == before.refresh_token
        return
    assert response.status_code == 200
    low, high = lifetime
    assert low <= response.json()["expires_in"] <= high
    after = await stored(live)
    assert after.access_token_expires_at - after.last_refreshed_at <= timedelta(days=1)
    assert after.refresh_token == before.refresh_token
