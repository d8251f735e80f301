"""Repairing scopes: the scopes Google granted are what the account holds; a token request or
a listing needing one it lacks gets 403 `scope_not_granted` with a link that adds it by
incremental authorization, and the account (the same one, never a new one) grows. Broker
and sandbox provider, both databases.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlmodel import select

from tests.support.flow import BROKER_ORIGIN, Live
from tests.support.hygiene import register_secret
from token_broker.store.models import Account

ALICE = "alice@example.com"
GMAIL = "https://www.googleapis.com/auth/gmail."
READONLY, LABELS, METADATA = GMAIL + "readonly", GMAIL + "labels", GMAIL + "metadata"


@pytest.fixture
def live_settings() -> dict[str, Any]:
    return {
        "scopes": ("openid", "email", "profile", READONLY, LABELS, METADATA),
        "required_scopes": (METADATA,),
    }


async def connect(live: Live, *scopes: str) -> str:
    started = await live.start(login_hint=ALICE, scopes=list(scopes))
    answer = await live.consent(started["authorization_url"], email=ALICE)
    assert (await live.callback(answer)).status_code == 200
    return str(live.provider.state.users[ALICE].sub)


async def accounts(live: Live) -> list[Account]:
    async with live.broker.state.database.transaction() as session:
        return list((await session.exec(select(Account))).all())


async def token(live: Live, subject: str, *scopes: str) -> Any:
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/access-token",
        params=[("scope", scope) for scope in scopes],
        headers=await live.headers(),
    )
    if response.status_code == 200:
        register_secret(response.json()["access_token"])
    return response


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_a_token_for_a_scope_the_grant_lacks_links_to_adding_it(live: Live) -> None:
    subject = await connect(live, "openid", "email", READONLY)
    before = await accounts(live)
    assert sorted(before[0].scope_list) == sorted([
        "openid", "https://www.googleapis.com/auth/userinfo.email", READONLY, METADATA
    ])  # fmt: skip
    # Granted scopes, in either spelling, pass (cache hits included).
    for scopes in ((), (READONLY,), ("email", READONLY)):
        assert (await token(live, subject, *scopes)).status_code == 200
    lacking = await token(live, subject, READONLY, LABELS)
    assert lacking.status_code == 403
    problem = lacking.json()
    assert problem["code"] == "scope_not_granted"
    assert problem["missing_scopes"] == [LABELS]
    link = problem["authorization_url"]
    assert link.startswith(f"{BROKER_ORIGIN}/v1/oauth/reauthorize?link=")

    opened = await live.open_link(link)
    assert opened.status_code == 303
    at_google = query(opened.headers["location"])
    assert at_google["include_granted_scopes"] == "true"
    assert at_google["login_hint"] == ALICE
    assert LABELS in at_google["scope"].split()
    answer = await live.consent(opened.headers["location"], email=ALICE)
    assert (await live.callback(answer)).status_code == 200

    after = await accounts(live)
    assert [row.id for row in after] == [row.id for row in before]  # no new account
    assert LABELS in after[0].scope_list
    assert READONLY in after[0].scope_list  # kept: include_granted_scopes
    granted = await token(live, subject, LABELS)
    assert granted.status_code == 200
    assert LABELS in granted.json()["scopes"]


async def test_incremental_authorization_for_an_account(live: Live) -> None:
    subject = await connect(live, "openid", "email", READONLY)
    account_id = (await accounts(live))[0].id
    headers = await live.headers()
    url = f"/v1/accounts/{ALICE}/authorizations"

    not_allowed = await live.broker.client.post(
        url, json={"scopes": [GMAIL + "send"]}, headers=headers
    )
    assert not_allowed.status_code == 400
    assert not_allowed.json()["code"] == "scope_not_allowed"
    unknown = await live.broker.client.post(
        "/v1/accounts/nobody@example.com/authorizations", json={"scopes": [LABELS]},
        headers=headers,
    )  # fmt: skip
    assert unknown.status_code == 404
    empty = await live.broker.client.post(url, json={"scopes": []}, headers=headers)
    assert empty.status_code == 422

    # Completed as someone else: nothing stored, alice's account as it was.
    started = await live.broker.client.post(url, json={"scopes": [LABELS]}, headers=headers)
    assert started.status_code == 201
    at_google = query(started.json()["authorization_url"])
    assert (at_google["include_granted_scopes"], at_google["login_hint"]) == ("true", ALICE)
    answer = await live.consent(started.json()["authorization_url"], email="bob@example.com")
    assert (await live.callback(answer)).status_code == 403
    outcome = await live.broker.client.get(
        f"/v1/authorizations/{started.json()['id']}", headers=headers
    )
    assert outcome.json()["error"]["code"] == "account_mismatch"
    assert len(await accounts(live)) == 1

    # The new scope unticked: scope_not_granted, nothing stored, a link to try again.
    retry = await live.broker.client.post(url, json={"scopes": [LABELS]}, headers=headers)
    answer = await live.consent(
        retry.json()["authorization_url"], email=ALICE,
        granted_scopes=["openid", "email", "profile", READONLY, METADATA],
    )  # fmt: skip
    refused = await live.callback(answer)
    assert refused.status_code == 403
    failed = await live.broker.client.get(
        f"/v1/authorizations/{retry.json()['id']}", headers=headers
    )
    assert failed.json()["error"]["code"] == "scope_not_granted"
    assert LABELS not in (await accounts(live))[0].scope_list

    # Completed: the same account, its scopes grown.
    done = await live.broker.client.post(url, json={"scopes": [LABELS]}, headers=headers)
    answer = await live.consent(done.json()["authorization_url"], email=ALICE)
    assert (await live.callback(answer)).status_code == 200
    outcome = await live.broker.client.get(
        f"/v1/authorizations/{done.json()['id']}", headers=headers
    )
    assert outcome.json()["status"] == "connected"
    assert outcome.json()["account"] == {"id": account_id, "subject": subject, "email": ALICE}
    rows = await accounts(live)
    assert [row.id for row in rows] == [account_id]
    assert {LABELS, READONLY} <= set(rows[0].scope_list)


async def test_listings_check_their_scope_before_calling_gmail(live: Live) -> None:
    subject = await connect(live, METADATA)
    headers = await live.headers()
    base = f"/v1/accounts/{subject}/messages"
    assert (
        await live.broker.client.get(base, params={"limit": 5}, headers=headers)
    ).status_code == 200
    live.provider.state.calls.clear()
    for params in ({"q": "is:unread"}, {"format": "full", "limit": 5}):
        lacking = await live.broker.client.get(base, params=params, headers=headers)
        assert lacking.status_code == 403
        assert lacking.json()["code"] == "scope_not_granted"
        assert lacking.json()["missing_scopes"] == [READONLY]
        assert lacking.json()["authorization_url"].startswith(BROKER_ORIGIN)
    one = await live.broker.client.get(f"{base}/abc123", params={"format": "raw"}, headers=headers)
    assert one.json()["code"] == "scope_not_granted"
    assert live.provider.state.calls["gmail.messages.list"] == 0  # refused before Gmail
    assert live.provider.state.calls["gmail.messages.get"] == 0
