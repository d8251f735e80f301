"""Access tokens against a respx-pinned token endpoint: cache, refresh, failure classes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
import sqlalchemy as sa
from sqlmodel import select

from tests.support.brokers import TEST_CLIENT_ID, TEST_CLIENT_SECRET, UPSTREAM, Broker
from tests.support.google_fakes import SUBJECT, form, token_body
from token_broker.services.api_keys import Permission
from token_broker.store.models import Account, AuditEvent, OAuthState


class Caller:
    def __init__(self, broker: Broker, upstream: respx.MockRouter, headers: dict[str, str]):
        self.broker = broker
        self.upstream = upstream
        self.headers = headers

    async def token(self, account: str = SUBJECT, **params: Any) -> httpx.Response:
        return await self.broker.client.get(
            f"/v1/accounts/{account}/access-token", params=params, headers=self.headers
        )

    async def stored(self) -> Account:
        async with self.broker.state.database.transaction() as session:
            return (await session.exec(select(Account))).one()

    async def state_rows(self) -> int:
        async with self.broker.state.database.transaction() as session:
            return len((await session.exec(select(OAuthState))).all())

    def forget_cache(self) -> None:
        self.broker.state.tokens.cache.drop(None)


@pytest.fixture
async def caller(broker: Broker, upstream: respx.MockRouter) -> Caller:
    """An account connected with a token that expires in 1800 s, and a caller's API key."""
    upstream.post("/token").respond(json=token_body(expires_in=1800))
    exchanged = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Ainitial"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert exchanged.status_code == 200, exchanged.text
    return Caller(broker, upstream, await broker.headers(Permission.TOKENS_READ))


def refresh_answers(upstream: respx.MockRouter, *answers: Any) -> respx.Route:
    route = upstream.post("/token")
    route.side_effect = list(answers)
    route.calls.clear()  # type: ignore[attr-defined]
    return route


def refreshed(**overrides: Any) -> httpx.Response:
    body = token_body(access_token="ya29.refreshed-token", refresh_token=None, **overrides)
    return httpx.Response(200, json=body)


@contextmanager
def sql_statements(broker: Broker) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = broker.state.database.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def test_cache_hit_costs_no_upstream_call_and_no_query(caller: Caller) -> None:
    route = refresh_answers(caller.upstream)
    first = await caller.token()  # loads the account once
    assert first.status_code == 200
    with sql_statements(caller.broker) as statements:
        second = await caller.token(min_ttl=300)
    assert second.status_code == 200
    assert statements == []
    assert route.call_count == 0
    body = second.json()
    assert body["access_token"] == "ya29.upstream-access-token"
    assert body["token_type"] == "Bearer"
    assert 1700 < body["expires_in"] <= 1800
    assert body["scopes"] == sorted(token_body()["scope"].split())
    assert second.headers["cache-control"] == "no-store"


async def test_refresh_request_is_exact_and_min_ttl_is_honoured(caller: Caller) -> None:
    route = refresh_answers(caller.upstream, refreshed())
    response = await caller.token(min_ttl=3300)  # more than the cached token has left
    assert response.status_code == 200
    assert response.json()["access_token"] == "ya29.refreshed-token"
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.url == f"{UPSTREAM}/token"
    assert form(request) == {
        "grant_type": "refresh_token",
        "refresh_token": "1//upstream-refresh-token",
        "client_id": TEST_CLIENT_ID,
        "client_secret": TEST_CLIENT_SECRET,
    }
    stored = await caller.stored()
    assert stored.last_refreshed_at is not None
    # The refresh response had no refresh token: the stored one is kept.
    keyring = caller.broker.state.keyring
    assert (
        keyring.open(
            stored.refresh_token, column=Account.REFRESH_TOKEN, row=stored.id
        ).get_secret_value()
        == "1//upstream-refresh-token"
    )


async def test_force_refresh_refreshes(caller: Caller) -> None:
    route = refresh_answers(caller.upstream, refreshed())
    response = await caller.token(force_refresh="true")
    assert response.json()["access_token"] == "ya29.refreshed-token"
    assert route.call_count == 1


async def test_short_lived_tokens_do_not_loop(caller: Caller) -> None:
    route = refresh_answers(caller.upstream, refreshed(expires_in=60), refreshed(expires_in=60))
    first = await caller.token(min_ttl=3300)
    assert first.status_code == 200
    assert first.json()["expires_in"] <= 60
    assert route.call_count == 1  # the just-minted token is the best there is


async def test_token_without_expires_in_gets_a_conservative_lifetime(caller: Caller) -> None:
    refresh_answers(caller.upstream, refreshed(expires_in=None))
    body = (await caller.token(force_refresh="true")).json()
    assert 590 <= body["expires_in"] <= 600


async def test_rotated_refresh_token_is_stored(caller: Caller) -> None:
    refresh_answers(
        caller.upstream, httpx.Response(200, json=token_body(refresh_token="1//rotated"))
    )
    assert (await caller.token(force_refresh="true")).status_code == 200
    stored = await caller.stored()
    keyring = caller.broker.state.keyring
    assert (
        keyring.open(
            stored.refresh_token, column=Account.REFRESH_TOKEN, row=stored.id
        ).get_secret_value()
        == "1//rotated"
    )


async def test_concurrent_callers_share_one_refresh(caller: Caller) -> None:
    gate = asyncio.Event()

    async def slow_refresh(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return refreshed()

    route = caller.upstream.post("/token")
    route.side_effect = slow_refresh
    route.calls.clear()  # type: ignore[attr-defined]
    requests = [asyncio.create_task(caller.token(min_ttl=3300)) for _ in range(200)]
    await asyncio.sleep(0)
    gate.set()
    responses = await asyncio.gather(*requests)
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["access_token"] for r in responses} == {"ya29.refreshed-token"}
    assert route.call_count == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            400,
            json={
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked.",
            },
        ),
        httpx.Response(
            401, json={"error": "unauthorized_client", "error_description": "Unauthorized"}
        ),
    ],
)
async def test_dead_grant_revokes_the_account(caller: Caller, answer: httpx.Response) -> None:
    route = refresh_answers(caller.upstream, answer)
    response = await caller.token(force_refresh="true")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "reauthorization_required"
    link = urlsplit(body["authorization_url"])
    assert f"{link.scheme}://{link.netloc}{link.path}" == (
        "https://broker.example/v1/oauth/reauthorize"
    )
    assert await caller.state_rows() == 0  # producing the 409 wrote no state
    opened = await caller.broker.client.get(f"{link.path}?{link.query}")
    assert opened.status_code == 303
    params = {k: v[0] for k, v in parse_qs(urlsplit(opened.headers["location"]).query).items()}
    assert params["login_hint"] == "alice@example.com"
    assert params["prompt"] == "consent"
    assert params["access_type"] == "offline"
    stored = await caller.stored()
    assert stored.status == "revoked"
    assert stored.last_refresh_error == answer.json()["error"]
    assert stored.refresh_token is None
    assert stored.access_token is None
    # Later calls, on this replica or after a restart (cold cache), do not call the provider.
    again = await caller.token()
    assert again.status_code == 409
    caller.forget_cache()
    caller.broker.state.tokens.forget(None)
    cold = await caller.token()
    assert cold.status_code == 409
    assert cold.json()["authorization_url"].startswith(
        "https://broker.example/v1/oauth/reauthorize?link="
    )
    assert await caller.state_rows() == 1  # only the opening above made one
    assert route.call_count == 1
    account = await caller.broker.client.get(
        f"/v1/accounts/{SUBJECT}", headers=await caller.broker.headers(Permission.ACCOUNTS_READ)
    )
    assert account.json()["status"] == "revoked"


async def test_session_policy_error_asks_for_reauth_without_revoking(caller: Caller) -> None:
    refresh_answers(
        caller.upstream,
        httpx.Response(400, json={"error": "invalid_grant", "error_subtype": "invalid_rapt"}),
    )
    response = await caller.token(force_refresh="true")
    assert response.status_code == 409
    assert (await caller.stored()).status == "active"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"error": "internal_failure"}),
        httpx.Response(503, text="<html>down</html>"),
        httpx.Response(429, json={"error": "rate_limit_exceeded"}, headers={"Retry-After": "1"}),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"expires_in": 3599}),
        httpx.TimeoutException("slow"),
        httpx.ConnectError("refused"),
    ],
    ids=["500", "503-html", "429", "garbage", "no-access-token", "timeout", "connect"],
)
async def test_transient_failures_are_bounded_then_503(
    broker_factory, settings_factory, upstream: respx.MockRouter, failure: Any
) -> None:
    broker = await broker_factory(
        settings_factory(
            refresh_attempts=3,
            refresh_budget_seconds=30,
            refresh_lease_seconds=40,
            refresh_cooldown_seconds=60,
        )
    )
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    broker.state.tokens.sleep = no_wait
    upstream.post("/token").respond(json=token_body())
    await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0A"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    caller = Caller(broker, upstream, await broker.headers(Permission.TOKENS_READ))
    before = await caller.stored()
    route = refresh_answers(upstream, *([failure] * 5))
    response = await caller.token(force_refresh="true")
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert route.call_count == 3
    assert len(waits) == 2
    # Exponential from 0.5 s with up to 0.25 s of jitter, never shorter than Retry-After.
    floor = 1.0 if "429" in str(failure) else 0.0
    for wait, base in zip(waits, (0.5, 1.0), strict=True):
        assert max(base, floor) <= wait <= max(base + 0.25, floor)
    after = await caller.stored()
    assert after.refresh_token == before.refresh_token
    assert after.status == "active"
    # The cool-down: the next caller fails fast without calling the provider.
    fast = await caller.token(force_refresh="true")
    assert fast.status_code == 503
    assert route.call_count == 3


async def test_invalid_client_on_refresh_is_an_operator_problem(caller: Caller) -> None:
    refresh_answers(caller.upstream, httpx.Response(401, json={"error": "invalid_client"}))
    response = await caller.token(force_refresh="true")
    assert response.status_code == 502
    assert response.json()["code"] == "provider_rejected_client"
    assert TEST_CLIENT_SECRET not in response.text
    assert (await caller.stored()).status == "active"


async def test_unknown_account_is_404(caller: Caller) -> None:
    response = await caller.token("nobody@example.com")
    assert response.status_code == 404
    assert response.json()["code"] == "account_not_found"
    response = await caller.token("../../etc/passwd")
    assert response.status_code in (404, 422)


async def test_email_works_as_the_account_reference(caller: Caller) -> None:
    assert (await caller.token("alice@example.com")).status_code == 200
    assert (await caller.token("ALICE@example.com")).status_code == 200


async def test_min_ttl_is_bounded(caller: Caller) -> None:
    assert (await caller.token(min_ttl=3601)).status_code == 422
    assert (await caller.token(min_ttl=-1)).status_code == 422


async def test_delete_revokes_upstream_then_forgets_everything(caller: Caller) -> None:
    assert (await caller.token()).status_code == 200
    revoke = caller.upstream.post("/revoke").respond(json={})
    writer = await caller.broker.headers(Permission.ACCOUNTS_WRITE)
    response = await caller.broker.client.delete(f"/v1/accounts/{SUBJECT}", headers=writer)
    assert response.status_code == 200
    assert response.json() == {"deleted": True, "upstream_revoked": True}
    assert form(revoke.calls.last.request) == {"token": "1//upstream-refresh-token"}
    assert (await caller.token()).status_code == 404
    async with caller.broker.state.database.transaction() as session:
        assert (await session.exec(select(Account))).all() == []
    again = await caller.broker.client.delete(f"/v1/accounts/{SUBJECT}", headers=writer)
    assert again.status_code == 404


async def test_delete_when_upstream_revoke_fails_still_deletes(caller: Caller) -> None:
    caller.upstream.post("/revoke").mock(side_effect=httpx.ConnectError("down"))
    writer = await caller.broker.headers(Permission.ACCOUNTS_WRITE)
    response = await caller.broker.client.delete("/v1/accounts/alice@example.com", headers=writer)
    assert response.json() == {"deleted": True, "upstream_revoked": False}


async def test_audit_trail(caller: Caller) -> None:
    refresh_answers(
        caller.upstream, refreshed(), httpx.Response(400, json={"error": "invalid_grant"})
    )
    await caller.token()
    await caller.token(force_refresh="true")
    await caller.token(force_refresh="true")
    await caller.broker.state.audit.flush(closing=True)  # as at the end of the window
    async with caller.broker.state.database.transaction() as session:
        events = (await session.exec(select(AuditEvent).order_by(AuditEvent.id))).all()
    trail = [(e.action, e.outcome, (e.detail or {}).get("source")) for e in events]
    assert ("token_issued", "ok", "database") in trail  # the first token of the window
    assert ("refresh", "ok", None) in trail
    assert ("refresh", "failed", None) in trail
    assert ("account_revoked", "unknown_invalid_grant", None) in trail
    first, closing = [e for e in events if e.action == "token_issued"]
    assert first.client_id
    assert first.account_id
    assert first.request_id
    assert (closing.client_id, closing.account_id) == (first.client_id, first.account_id)
    assert closing.detail is not None
    assert closing.detail["count"] == 2
    assert closing.detail["sources"] == {"database": 1, "refreshed": 1}
