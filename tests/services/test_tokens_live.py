"""Access tokens end to end: one broker against the sandbox provider, on both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa

from tests.support.flow import Live
from tests.support.hygiene import register_secret
from token_broker.kit.clock import utcnow
from token_broker.store.models import Account


async def connected(live: Live) -> str:
    assert (await live.connect()).status_code == 200
    return str(live.provider.state.users["alice@example.com"].sub)


async def age_token(live: Live, seconds_left: int = 5) -> None:
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(Account).values(
                access_token_expires_at=utcnow() + timedelta(seconds=seconds_left)
            )
        )
    live.broker.state.tokens.forget(None)


async def test_two_hundred_callers_one_refresh(live: Live) -> None:
    subject = await connected(live)
    await age_token(live)
    live.provider.state.calls.clear()
    headers = await live.headers()
    responses = await asyncio.gather(*(
        live.broker.client.get(f"/v1/accounts/{subject}/access-token", headers=headers)
        for _ in range(200)
    ))  # fmt: skip
    assert [r.status_code for r in responses] == [200] * 200
    tokens = {r.json()["access_token"] for r in responses}
    assert len(tokens) == 1
    register_secret(tokens.pop())
    assert live.provider.state.calls["token:refresh_token"] == 1


async def test_revoked_grant_is_409_then_quiet_until_reconnect(live: Live) -> None:
    subject = await connected(live)
    live.provider.state.revoke_user("alice@example.com")
    live.provider.state.calls.clear()
    headers = await live.headers()
    url = f"/v1/accounts/{subject}/access-token"
    first = await live.broker.client.get(url, params={"force_refresh": "true"}, headers=headers)
    assert first.status_code == 409
    assert first.json()["code"] == "reauthorization_required"
    for _ in range(5):
        assert (await live.broker.client.get(url, headers=headers)).status_code == 409
    assert live.provider.state.calls["token"] == 1

    # Following the authorization URL reconnects the account.
    answer = await live.consent(first.json()["authorization_url"], email="alice@example.com")
    assert (await live.callback(answer)).status_code == 200
    again = await live.broker.client.get(url, headers=headers)
    assert again.status_code == 200
    register_secret(again.json()["access_token"])


async def test_provider_with_short_lived_tokens(live: Live) -> None:
    live.provider.state.access_token_lifetime = 120
    subject = await connected(live)
    live.provider.state.calls.clear()
    headers = await live.headers()
    url = f"/v1/accounts/{subject}/access-token"
    response = await live.broker.client.get(url, params={"min_ttl": 600}, headers=headers)
    assert response.status_code == 200
    assert response.json()["expires_in"] <= 120
    register_secret(response.json()["access_token"])
    assert live.provider.state.calls["token:refresh_token"] == 1
