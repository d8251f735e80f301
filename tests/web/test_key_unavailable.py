"""Stored secrets that do not open: the documented 503 `key_unavailable` naming the key id,
and `/readyz` saying so; never a 500, never key material.

Every sealed column a request opens (an account's access and refresh tokens, a state's
PKCE verifier) is damaged in generated ways: a flipped character anywhere, truncated,
re-labelled with an unknown or malformed key id, replaced by plaintext, or copied
from another row; and a replica is started without the key that sealed them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlmodel import col

from tests.support.brokers import TEST_KEYS, Broker
from tests.support.google_fakes import SUBJECT
from tests.support.hygiene import register_secret
from token_broker.services.authorizations import hash_state
from token_broker.settings import Settings
from token_broker.store.models import Account, OAuthState
from token_broker.store.sealing import Keyring

OTHER_KEY = register_secret(Keyring.generate_entry("other1"))
register_secret(OTHER_KEY.split(":", 1)[1])
KEY_MATERIAL = (TEST_KEYS.split(":", 1)[1], OTHER_KEY.split(":", 1)[1])
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def damaged(draw: st.DrawFn, sealed: str, elsewhere: str) -> tuple[str, str | None, bool]:
    """A damaged copy of `sealed`: (value, the key id it names, whether that key is missing)."""
    version, kid, body = sealed.split(".", 2)
    how = draw(st.sampled_from(["flip", "truncate", "unknown_kid", "bad_kid", "plain", "copy"]))
    if how == "flip":
        at = draw(st.integers(0, len(body) - 2))  # the last character may carry padding bits
        replacement = draw(st.sampled_from("AQgw_-09").filter(lambda c: c != body[at]))
        return f"{version}.{kid}.{body[:at]}{replacement}{body[at + 1 :]}", kid, False
    if how == "truncate":
        return f"{version}.{kid}.{body[: draw(st.integers(1, len(body) - 1))]}", kid, False
    if how == "unknown_kid":
        unknown = draw(st.from_regex(r"\Ak[a-z0-9]{1,8}\Z").filter(lambda k: k != kid))
        return f"{version}.{unknown}.{body}", unknown, True
    if how == "bad_kid":
        return f"{version}.{draw(st.sampled_from(['', 'a b', 'k' * 41, 'é']))}.{body}", None, False
    if how == "plain":
        return draw(st.sampled_from(["1//plaintext", "", "tb1..", "tb2.test1.AAAA"])), None, False
    return elsewhere, kid, False  # sealed for another row: does not authenticate here


async def set_column(broker: Broker, table: Any, column: str, value: str) -> None:
    async with broker.state.database.transaction() as session:
        await session.exec(sa.update(table).values({column: value}))  # type: ignore[call-overload]


async def sealed_values(broker: Broker) -> Account:
    async with broker.state.database.transaction() as session:
        return (await session.exec(sa.select(Account))).scalars().one()  # type: ignore[call-overload,no-any-return]


def assert_key_unavailable(response: httpx.Response, key_id: str | None) -> None:
    assert response.status_code == 503, response.text[:300]
    body = response.json()
    assert body["code"] == "key_unavailable"
    assert body["key_id"] == key_id
    assert int(response.headers["retry-after"]) >= 1
    if key_id is not None:
        assert f"key {key_id}" in body["detail"]
    for material in KEY_MATERIAL:
        assert material not in response.text


@given(data=st.data(), column=st.sampled_from(["access_token", "refresh_token"]))
@EXAMPLES
async def test_an_account_secret_that_does_not_open_is_503_key_unavailable(
    connected: Broker, data: st.DataObject, column: str
) -> None:
    account = await sealed_values(connected)
    original = getattr(account, column)
    other = "refresh_token" if column == "access_token" else "access_token"
    value, key_id, missing = data.draw(damaged(original, getattr(account, other)))
    await set_column(connected, Account, column, value)
    connected.state.tokens.forget(None)
    connected.state.keyring.failures.missing.clear()
    connected.state.keyring.failures.rejected.clear()
    headers = await connected.headers()
    try:
        # An access token that does not open is refreshed past only when forced; a
        # refresh token is opened by every refresh.
        force = "true" if column == "refresh_token" else "false"
        answer = await connected.client.get(
            f"/v1/accounts/{SUBJECT}/access-token?force_refresh={force}", headers=headers
        )
        assert_key_unavailable(answer, key_id)
        if column == "access_token":
            listing = await connected.client.get(
                f"/v1/accounts/{SUBJECT}/messages", headers=headers
            )
            assert_key_unavailable(listing, key_id)
        else:  # deleting revokes the grant upstream first, with the refresh token
            deleted = await connected.client.delete(f"/v1/accounts/{SUBJECT}", headers=headers)
            assert_key_unavailable(deleted, key_id)
        ready = await connected.client.get("/readyz")
        keyring = ready.json().get("checks", {}).get("keyring", "")
        if missing:
            assert ready.status_code == 503
            assert keyring.startswith(f"missing key {key_id} ")
        else:
            assert ready.status_code == 200
            assert keyring.startswith("degraded: stored values did not authenticate")
            assert f"under key {key_id or '?'}" in keyring
        for material in KEY_MATERIAL:
            assert material not in ready.text
    finally:
        await set_column(connected, Account, column, original)
        connected.state.tokens.forget(None)


async def start_flow(broker: Broker) -> tuple[str, str]:
    """A started authorization's state, and its sealed PKCE verifier."""
    started = await broker.client.post(
        "/v1/authorizations", json={}, headers=await broker.headers()
    )
    state = register_secret(started.json()["state"])
    async with broker.state.database.transaction() as session:
        row = await session.get(OAuthState, hash_state(state))
    assert row is not None
    return state, row.code_verifier


@given(data=st.data())
@EXAMPLES
async def test_a_callback_whose_verifier_does_not_open_is_an_html_503(
    connected: Broker, data: st.DataObject
) -> None:
    state, verifier = await start_flow(connected)
    _, elsewhere = await start_flow(connected)
    value, key_id, _ = data.draw(damaged(verifier, elsewhere))
    async with connected.state.database.transaction() as session:
        await session.exec(
            sa.update(OAuthState)  # type: ignore[call-overload]
            .where(col(OAuthState.state_hash) == hash_state(state))
            .values(code_verifier=value)
        )
    response = await connected.client.get(
        "/v1/oauth/callback", params={"code": "c", "state": state}
    )
    assert response.status_code == 503, response.text[:300]
    assert response.headers["content-type"].startswith("text/html")
    assert "key_unavailable" in response.text
    if key_id is not None:
        assert f"key {key_id}" in response.text
    for material in KEY_MATERIAL:
        assert material not in response.text


async def test_a_replica_without_the_key_is_unready_and_answers_503(
    connected: Broker,
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
) -> None:
    lacking = await broker_factory(settings_factory(encryption_keys=SecretStr(OTHER_KEY)))
    # Before any request: readiness samples the stored secrets and names the missing key.
    sampled = await lacking.client.get("/readyz")
    assert sampled.status_code == 503
    assert "key test1 (not in this replica's keyring" in sampled.json()["checks"]["secrets"]
    headers = await lacking.headers()
    answer = await lacking.client.get(f"/v1/accounts/{SUBJECT}/access-token", headers=headers)
    assert_key_unavailable(answer, "test1")
    deleted = await lacking.client.delete(f"/v1/accounts/{SUBJECT}", headers=headers)
    assert_key_unavailable(deleted, "test1")
    ready = await lacking.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "not_ready"
    assert ready.json()["checks"]["keyring"].startswith("missing key test1 (")
    # The replica holding the key serves the same account.
    fine = await connected.client.get(
        f"/v1/accounts/{SUBJECT}/access-token", headers=await connected.headers()
    )
    assert fine.status_code == 200


async def test_every_route_that_opens_a_secret_documents_it(connected: Broker) -> None:
    spec = (await connected.client.get("/openapi.json")).json()
    for path, method in (
        ("/v1/accounts/{account}/access-token", "get"),
        ("/v1/accounts/{account}/messages", "get"),
        ("/v1/accounts/{account}/messages/{message_id}", "get"),
        ("/v1/accounts/{account}", "delete"),
        ("/v1/oauth/callback", "get"),
    ):
        assert "`key_unavailable`" in spec["paths"][path][method]["responses"]["503"]["description"]
