"""Why a grant died, end to end: the sandbox refuses refreshes as Google does, and the broker
records the reason on the account, in the listing filters, in the 409, in the webhook and in
metrics; sees a testing-status grant's end coming (`account.expiring`, once); and tells of
recovery. Broker and sandbox provider, both databases.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import select

from tests.services.test_operations import samples, value
from tests.support.brokers import TEST_CLIENT_ID
from tests.support.flow import Live
from tests.support.grants import account, events, let_time_pass, live_with_webhooks
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.provider import Provider
from token_broker.store.models import Account, AuditEvent

ALICE = "alice@example.com"
DAY = 86_400


async def connect(live: Live, email: str = ALICE) -> str:
    response = await live.connect(email)
    assert response.status_code == 200, response.text
    return str(live.provider.state.users[email].sub)


async def token(live: Live, subject: str, **params: Any) -> Any:
    response = await live.broker.client.get(
        f"/v1/accounts/{subject}/access-token", params=params, headers=await live.headers()
    )
    if response.status_code == 200:
        register_secret(response.json()["access_token"])
    return response


async def listed(live: Live, **params: str) -> list[str]:
    response = await live.broker.client.get(
        "/v1/accounts", params=params, headers=await live.headers()
    )
    assert response.status_code == 200, response.text
    return [item["subject"] for item in response.json()["items"]]


async def test_testing_status_grant_ends_seven_days_after_consent_and_is_seen_coming(
    provider: Provider, broker_factory: Any, settings_factory: Any
) -> None:
    provider.state.clients[TEST_CLIENT_ID].publishing_status = "testing"
    async with live_with_webhooks(
        provider, broker_factory, settings_factory,
        google_publishing_status="testing", expiring_notice_seconds=DAY,
    ) as (live, receiver):  # fmt: skip
        subject = await connect(live)
        shown = (await live.broker.client.get(
            f"/v1/accounts/{subject}", headers=await live.headers()
        )).json()  # fmt: skip
        granted = (await account(live.broker, subject)).granted_at
        assert granted is not None
        shown_end = datetime.fromisoformat(shown["grant_expires_at"].replace("Z", "+00:00"))
        assert shown_end == granted + timedelta(days=7)
        assert shown["status"] == "active"
        assert shown["status_reason"] is None

        # Six days in: nothing yet. Then within the notice: told once, however often and
        # by however many replicas it is looked at.
        await let_time_pass(live, ALICE, 5 * DAY)
        assert await live.broker.state.grant_expiry.sweep() == 0
        await let_time_pass(live, ALICE, 1 * DAY + 600)
        other = await broker_factory(live.broker.state.settings)
        noticed = await asyncio.gather(
            live.broker.state.grant_expiry.sweep(),
            other.state.grant_expiry.sweep(),
            live.broker.state.grant_expiry.sweep(),
        )
        assert sum(noticed) == 1
        await eventually(lambda: events(receiver, "account.expiring"), within=10)
        expiring = events(receiver, "account.expiring")
        assert len(expiring) == 1
        assert expiring[0]["reason"] == "expired_testing"
        assert expiring[0]["grant_expires_at"] == expiring[0]["account"]["grant_expires_at"]
        assert await live.broker.state.grant_expiry.sweep() == 0
        families = samples((await live.broker.client.get("/metrics")).text)
        assert value(families, "token_broker_accounts_expiring_within_day") == 1

        # Past the end Google refuses the refresh, and the 409 says why.
        await let_time_pass(live, ALICE, DAY)
        refused = await token(live, subject, force_refresh="true")
        assert refused.status_code == 409
        problem = refused.json()
        assert problem["code"] == "reauthorization_required"
        assert problem["status_reason"] == "expired_testing"
        assert "testing" in problem["status_detail"]
        stored = await account(live.broker, subject)
        assert (stored.status, stored.status_reason) == ("revoked", "expired_testing")
        assert await listed(live, status="revoked", reason="expired_testing") == [subject]
        assert await listed(live, status="revoked", reason="expired_idle") == []
        await eventually(lambda: events(receiver, "account.revoked"), within=10)
        assert events(receiver, "account.revoked")[0]["reason"] == "expired_testing"

        # The user comes back: recovered, with the reason it recovers from; a new grant
        # with a new end and a new notice to come.
        answer = await live.consent(problem["authorization_url"], email=ALICE)
        assert (await live.callback(answer)).status_code == 200
        await eventually(lambda: events(receiver, "account.recovered"), within=10)
        assert events(receiver, "account.recovered")[0]["previous_reason"] == "expired_testing"
        renewed = await account(live.broker, subject)
        assert renewed.status == "active"
        assert renewed.expiring_notified_at is None
        assert renewed.grant_expires_at is not None
        families = samples((await live.broker.client.get("/metrics")).text)
        assert value(families, "token_broker_refresh_refusals_total", reason="expired_testing") == 1


async def test_time_based_access_ends_when_google_said(live: Live) -> None:
    live.provider.state.clients[TEST_CLIENT_ID].time_based_access_seconds = 3600
    subject = await connect(live)
    stored = await account(live.broker, subject)
    assert stored.grant_expiry_reason == "time_limited_access_expired"
    assert stored.grant_expires_at is not None
    assert stored.granted_at is not None
    lifetime = (stored.grant_expires_at - stored.granted_at).total_seconds()
    assert 3590 <= lifetime <= 3601
    await let_time_pass(live, ALICE, 3600)
    refused = await token(live, subject, force_refresh="true")
    assert refused.json()["status_reason"] == "time_limited_access_expired"
    assert await listed(live, reason="time_limited_access_expired") == [subject]


async def test_session_policy_asks_for_sign_in_and_keeps_the_account_active(
    provider: Provider, broker_factory: Any, settings_factory: Any
) -> None:
    async with live_with_webhooks(provider, broker_factory, settings_factory) as (
        live,
        receiver,
    ):
        subject = await connect(live)
        provider.state.users[ALICE].reauth_required = True
        for _ in range(2):
            refused = await token(live, subject, force_refresh="true")
            assert refused.status_code == 409
            assert refused.json()["status_reason"] == "session_policy"
        stored = await account(live.broker, subject)
        assert (stored.status, stored.status_reason) == ("active", "session_policy")
        assert stored.refresh_token is not None  # the grant stands
        assert await listed(live, status="active", reason="session_policy") == [subject]
        await eventually(lambda: events(receiver, "account.signin_required"), within=10)

        provider.state.users[ALICE].reauth_required = False  # the user signed in again
        assert (await token(live, subject, force_refresh="true")).status_code == 200
        assert (await account(live.broker, subject)).status_reason is None
        await eventually(lambda: events(receiver, "account.recovered"), within=10)
        assert len(events(receiver, "account.signin_required")) == 1  # once, not per failure
        assert events(receiver, "account.recovered")[0]["previous_reason"] == "session_policy"


async def test_admin_policy_idle_and_unknown(live: Live) -> None:
    alice = await connect(live)
    bob = await connect(live, "bob@example.com")
    carol = await connect(live, "carol@example.com")
    live.provider.state.users[ALICE].admin_restricted = True
    assert (await token(live, alice, force_refresh="true")).json()["status_reason"] == (
        "admin_policy"
    )
    await let_time_pass(live, "bob@example.com", 183 * DAY)
    assert (await token(live, bob, force_refresh="true")).json()["status_reason"] == (
        "expired_idle"
    )
    live.provider.state.revoke_user("carol@example.com")
    unknown = await token(live, carol, force_refresh="true")
    assert unknown.json()["status_reason"] == "unknown_invalid_grant"
    assert (await account(live.broker, carol)).status_detail.startswith(
        "Google answered invalid_grant, which it gives for every way a grant ends"
    )
    # The reason stays on the account for later callers, with no refresh attempted.
    live.provider.state.calls.clear()
    again = await token(live, carol)
    assert again.json()["status_reason"] == "unknown_invalid_grant"
    assert live.provider.state.calls["token"] == 0


async def test_token_limit_from_the_grants_the_broker_did_not_keep(live: Live) -> None:
    subject = await connect(live)
    await connect(live, "bob@example.com")
    # A consent that fails a check drops the refresh token Google just issued: here Alice
    # completes Bob's re-authorization link (account_mismatch), so Alice's is dropped.
    bob = await account(live.broker, str(live.provider.state.users["bob@example.com"].sub))
    link = live.broker.state.connect.links.url(
        account_id=bob.id, login_hint="bob@example.com", client_id=None
    )
    answer = await live.consent(link, email=ALICE)
    assert (await live.callback(answer)).status_code == 403
    assert (await account(live.broker, subject)).newer_refresh_tokens == 1
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(Account).values(newer_refresh_tokens=100)
        )
    live.provider.state.revoke_user(ALICE)
    refused = await token(live, subject, force_refresh="true")
    assert refused.json()["status_reason"] == "token_limit"


async def test_reasons_in_audit_and_metrics_without_identifiers(live: Live) -> None:
    subject = await connect(live)
    live.provider.state.revoke_user(ALICE)
    await token(live, subject, force_refresh="true")
    await live.broker.state.grant_expiry.count()
    families = samples((await live.broker.client.get("/metrics")).text)
    assert (
        value(families, "token_broker_accounts_by_reason", status="revoked",
              reason="unknown_invalid_grant") == 1
    )  # fmt: skip
    assert (
        value(families, "token_broker_account_status_changes_total", status="revoked",
              reason="unknown_invalid_grant") == 1
    )  # fmt: skip
    for family in families.values():
        for labels, _ in family:
            assert subject not in labels.values()
            assert ALICE not in labels.values()
    async with live.broker.state.database.transaction() as session:
        audit = (await session.exec(select(AuditEvent))).all()
    revoked = [event for event in audit if event.action == "account_revoked"]
    assert [(event.outcome, (event.detail or {}).get("error")) for event in revoked] == [
        ("unknown_invalid_grant", "invalid_grant")
    ]
