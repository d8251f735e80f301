"""The connect flow's trust boundaries, attacked: results bound to their caller,
re-authorization bound to its account, email lookups that cannot be shadowed, and the
checks a certified relying party makes. Broker and sandbox provider, both databases.

Each attack of issue 13 is a test here that failed before the fix (the broker handed
the result to whoever held the redirect, handed out a shared provider URL, and
resolved emails by whichever account was refreshed last).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.support.brokers import TEST_KEYS, Broker
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.provider import Provider
from token_broker.errors import InvalidLink
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.reauthorization import KEY_PURPOSE, ReauthorizationLinks
from token_broker.store.models import Account, AuditEvent, Authorization, OAuthState
from token_broker.store.sealing import Keyring

RETURN_TO = "https://app.example/connected"
VICTIM = "a@example.org"


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def rows(broker: Broker, model: Any) -> list[Any]:
    async with broker.state.database.transaction() as session:
        return list((await session.exec(select(model))).all())


async def token(live: Live, reference: str, headers: dict[str, str], **params: Any) -> Any:
    response = await live.broker.client.get(
        f"/v1/accounts/{reference}/access-token", params=params, headers=headers
    )
    if response.status_code == 200:
        register_secret(response.json()["access_token"])
    return response


def subject_of(live: Live, login: str) -> str:
    return str(live.provider.state.users[login].sub)


# --------------------------------------------------------------------------- 1. outcomes


async def test_redirect_carries_only_the_id_and_the_creator_confirms_over_the_api(
    live: Live,
) -> None:
    started = await live.start(login_hint="alice@example.com", return_to=RETURN_TO)
    session = {"authorization": started["id"]}  # what the app keeps before redirecting
    headers = await live.headers()
    pending = await live.broker.client.get(f"/v1/authorizations/{started['id']}", headers=headers)
    assert pending.json()["status"] == "pending"
    assert pending.json()["account"] is None

    answer = await live.consent(started["authorization_url"], email="alice@example.com")
    response = await live.callback(answer)
    assert response.status_code == 303
    returned = query(response.headers["location"])
    assert returned == {"authorization": started["id"], "status": "connected"}
    assert subject_of(live, "alice@example.com") not in response.headers["location"]

    assert returned["authorization"] == session["authorization"]  # the app compares...
    confirmed = await live.broker.client.get(  # ...and confirms
        f"/v1/authorizations/{returned['authorization']}", headers=headers
    )
    assert confirmed.status_code == 200
    body = confirmed.json()
    assert body["status"] == "connected"
    assert body["error"] is None
    assert body["account"]["subject"] == subject_of(live, "alice@example.com")
    assert body["account"]["email"] == "alice@example.com"
    assert body["completed_at"] is not None


async def test_only_the_creating_client_can_read_an_outcome(live: Live) -> None:
    started = await live.start()
    answer = await live.consent(started["authorization_url"])
    assert (await live.callback(answer)).status_code == 200
    other = await live.broker.headers(*Permission)  # every permission, but not the creator
    for authorization_id in (started["id"], str(uuid.uuid4())):
        response = await live.broker.client.get(
            f"/v1/authorizations/{authorization_id}", headers=other
        )
        assert response.status_code == 404
        assert response.json()["code"] == "authorization_not_found"
    # The same answer whether it exists or not: no oracle for ids.
    unauthenticated = await live.broker.client.get(f"/v1/authorizations/{started['id']}")
    assert unauthenticated.status_code == 401
    malformed = await live.broker.client.get(
        "/v1/authorizations/..%2F..%2Fhealthz", headers=await live.headers()
    )
    assert malformed.status_code in (404, 422)


async def test_login_csrf_and_forged_redirects_cannot_pass_the_confirmation(live: Live) -> None:
    """Attack 1: the attacker finishes their own flow and hands the callback URL to the
    victim's browser, or forges the redirect to the app outright."""
    live.provider.state.add_user("mallory@evil.example")
    victim_flow = await live.start(return_to=RETURN_TO)
    victim_session = {"authorization": victim_flow["id"]}

    attacker_flow = await live.start(return_to=RETURN_TO)  # same app, attacker's session
    answer = await live.consent(attacker_flow["authorization_url"], email="mallory@evil.example")
    # The victim's browser follows the attacker's callback URL.
    response = await live.callback(answer)
    returned = query(response.headers["location"])
    assert "account" not in returned
    assert returned["authorization"] != victim_session["authorization"]  # the app refuses

    # A forged redirect naming the victim's own authorization is refuted by the API.
    forged = {"authorization": victim_flow["id"], "status": "connected"}
    confirmed = await live.broker.client.get(
        f"/v1/authorizations/{forged['authorization']}", headers=await live.headers()
    )
    assert confirmed.json()["status"] == "pending"
    assert confirmed.json()["account"] is None
    # And the attacker's callback URL works once only.
    replayed = await live.callback(answer)
    assert replayed.status_code == 400
    assert "invalid_state" in replayed.text


async def test_failed_and_expired_outcomes(live: Live) -> None:
    headers = await live.headers()
    denied = await live.start(return_to=RETURN_TO)
    answer = await live.consent(denied["authorization_url"], decision="deny")
    response = await live.callback(answer)
    assert query(response.headers["location"]) == {
        "authorization": denied["id"],
        "status": "failed",
        "error": "access_denied",
    }
    failed = await live.broker.client.get(f"/v1/authorizations/{denied['id']}", headers=headers)
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"]["code"] == "access_denied"
    assert failed.json()["error"]["detail"]

    lapsing = await live.start()
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(Authorization)
            .where(Authorization.id == lapsing["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expired = await live.broker.client.get(f"/v1/authorizations/{lapsing['id']}", headers=headers)
    assert expired.json()["status"] == "expired"


# --------------------------------------------------------------------------- 2. links


async def revoked_alice(live: Live, reader: dict[str, str]) -> str:
    """alice connected, her grant revoked at the provider; the reader's 409 link."""
    assert (await live.connect("alice@example.com")).status_code == 200
    live.provider.state.revoke_user("alice@example.com")
    response = await token(live, "alice@example.com", reader, force_refresh="true")
    assert response.status_code == 409
    assert response.json()["code"] == "reauthorization_required"
    link = str(response.json()["authorization_url"])
    assert link.startswith("https://broker.example/v1/oauth/reauthorize?link=")
    return link


async def test_reauthorization_link_completed_as_someone_else_stores_nothing(live: Live) -> None:
    """Attack 2: a client holding only tokens:read completes the link as another person."""
    reader_key = await live.broker.api_key(Permission.TOKENS_READ)
    reader = {"Authorization": f"Bearer {reader_key}"}
    link = await revoked_alice(live, reader)
    states, authorizations = (
        len(await rows(live.broker, OAuthState)),
        len(await rows(live.broker, Authorization)),
    )
    for _ in range(3):  # producing the 409 writes nothing
        assert (await token(live, "alice@example.com", reader)).status_code == 409
    assert len(await rows(live.broker, OAuthState)) == states
    assert len(await rows(live.broker, Authorization)) == authorizations
    alice_before = await live.stored(subject_of(live, "alice@example.com"))

    opened = await live.open_link(link)
    assert opened.status_code == 303
    provider_url = opened.headers["location"]
    assert provider_url.startswith(live.provider.url)
    assert query(provider_url)["login_hint"] == "alice@example.com"
    assert query(provider_url)["prompt"] == "consent"
    answer = await live.consent(provider_url, email="bob@example.com")  # someone else
    response = await live.callback(answer)
    assert response.status_code == 403
    assert "account_mismatch" in response.text
    assert "Try again" in response.text

    accounts = await rows(live.broker, Account)
    assert [a.subject for a in accounts] == [alice_before.subject]  # bob was not stored
    alice_after = accounts[0]
    assert alice_after.status == "revoked"
    assert alice_after.refresh_token == alice_before.refresh_token
    assert alice_after.updated_at == alice_before.updated_at

    # The owner completes the same link afterwards.
    answer = await live.consent(link, email="alice@example.com")
    assert (await live.callback(answer)).status_code == 200
    assert (await live.stored(alice_before.subject)).status == "active"
    assert (await token(live, "alice@example.com", reader)).status_code == 200

    # The audit names the client whose request produced the link, for both flows.
    reader_id = next(
        c.client_id for c in [await live.broker.state.authenticator.authenticate(reader_key)]
    )
    connects = [e for e in await rows(live.broker, AuditEvent) if e.action == "account_connected"]
    from_link = [(e.outcome, e.client_id) for e in connects if e.client_id == reader_id]
    assert from_link == [("account_mismatch", reader_id), ("ok", reader_id)]
    outcomes = {
        a.status: a for a in await rows(live.broker, Authorization) if a.client_id == reader_id
    }
    assert outcomes["failed"].error_code == "account_mismatch"
    assert outcomes["connected"].account_subject == alice_before.subject


async def test_burning_or_cancelling_link_flows_never_locks_the_owner_out(live: Live) -> None:
    """Attack 2b: anyone opens the link and burns the state it mints."""
    reader = await live.broker.headers(Permission.TOKENS_READ)
    link = await revoked_alice(live, reader)
    owner = await live.open_link(link)  # the owner opens it first...
    for _ in range(5):  # ...then an attacker opens it again and again and burns each state
        opened = await live.open_link(link)
        burned = await live.broker.client.get(
            "/v1/oauth/callback",
            params={"state": query(opened.headers["location"])["state"], "error": "access_denied"},
        )
        assert burned.status_code == 400
    live.provider.state.add_user("mallory@evil.example")
    attacker = await live.consent(link, email="mallory@evil.example")
    assert (await live.callback(attacker)).status_code == 403

    answer = await live.consent(owner.headers["location"], email="alice@example.com")
    assert (await live.callback(answer)).status_code == 200
    assert (await live.stored(subject_of(live, "alice@example.com"))).status == "active"
    # Later 409s hand out working links too; the one above still opens.
    assert (await live.open_link(link)).status_code == 303


async def test_links_refuse_tampering_expiry_other_keys_and_deleted_accounts(live: Live) -> None:
    reader = await live.broker.headers(Permission.TOKENS_READ)
    link = await revoked_alice(live, reader)
    token_value = query(link)["link"]
    header, payload, signature = token_value.split(".")
    tampered = [
        f"{header}.{payload[:-2]}AA.{signature}",
        f"{header}.{payload}.{signature[:-2]}AA",
        f"{header}.{payload}.",
        "not-a-link",
        "",
        "x" * 5000,
    ]
    keyring = live.broker.state.keyring
    expired = ReauthorizationLinks(
        authorizations=live.broker.app.state.web.authorizations,
        database=live.broker.state.database,
        keyring=keyring,
        endpoint="https://broker.example/v1/oauth/reauthorize",
        lifetime_seconds=-10,
    ).url(account_id=None, login_hint=None, client_id=None)
    foreign = ReauthorizationLinks(
        authorizations=live.broker.app.state.web.authorizations,
        database=live.broker.state.database,
        keyring=Keyring.parse(Keyring.generate_entry("test1")),  # same kid, other key
        endpoint="https://broker.example/v1/oauth/reauthorize",
        lifetime_seconds=600,
    ).url(account_id=None, login_hint=None, client_id=None)
    states = len(await rows(live.broker, OAuthState))
    for candidate in [*tampered, query(expired)["link"], query(foreign)["link"]]:
        response = await live.broker.client.get("/v1/oauth/reauthorize", params={"link": candidate})
        assert response.status_code == 400, candidate
        assert "invalid_link" in response.text
        assert "text/html" in response.headers["content-type"]
    assert len(await rows(live.broker, OAuthState)) == states  # refused links write nothing

    admin = await live.headers()
    deleted = await live.broker.client.delete(
        f"/v1/accounts/{subject_of(live, 'alice@example.com')}", headers=admin
    )
    assert deleted.status_code == 200
    gone = await live.open_link(link)
    assert gone.status_code == 400
    assert "invalid_link" in gone.text
    # The signing keys come from the keyring and appear nowhere (the run's logs are
    # scanned for them too).
    links = live.broker.app.state.web.links
    for key in keyring.derive(KEY_PURPOSE).values():
        register_secret(key.hex())
        assert key.hex() not in repr(links)
        assert key.hex() not in repr(vars(links))


async def test_replicas_accept_each_others_links(
    live: Live, broker_factory: Any, settings_factory: Any, provider: Provider
) -> None:
    reader = await live.broker.headers(Permission.TOKENS_READ)
    link = await revoked_alice(live, reader)
    replica = await broker_factory(settings_factory(**provider.settings()))
    parts = urlsplit(link)
    opened = await replica.client.get(f"{parts.path}?{parts.query}")
    assert opened.status_code == 303
    assert query(opened.headers["location"])["login_hint"] == "alice@example.com"


async def test_a_failed_first_connect_links_to_a_flow_bound_only_to_its_creator(
    live: Live,
) -> None:
    headers = await live.headers()
    failed = await live.broker.client.post(
        "/v1/oauth/exchange", json={"code": "4/0Anot-a-code"}, headers=headers
    )
    assert failed.json()["code"] == "code_exchange_failed"
    answer = await live.consent(failed.json()["authorization_url"], email="bob@example.com")
    assert (await live.callback(answer)).status_code == 200
    (outcome,) = await rows(live.broker, Authorization)
    assert outcome.status == "connected"
    assert outcome.account_subject == subject_of(live, "bob@example.com")
    creator = await live.broker.state.authenticator.authenticate(
        headers["Authorization"].removeprefix("Bearer ")
    )
    assert outcome.client_id == creator.client_id
    readable = await live.broker.client.get(f"/v1/authorizations/{outcome.id}", headers=headers)
    assert readable.json()["status"] == "connected"


# --------------------------------------------------------------------------- 3. emails


async def by_email_answers(live: Live, reference: str) -> dict[str, Any]:
    """What token, messages and GET say for `reference` (DELETE is tried separately)."""
    headers = await live.headers()
    answers: dict[str, Any] = {}
    issued = await token(live, reference, headers)
    answers["token"] = issued.status_code, issued.json().get("code")
    listed = await live.broker.client.get(
        f"/v1/accounts/{reference}/messages", params={"limit": 1}, headers=headers
    )
    answers["messages"] = listed.status_code, listed.json().get("code")
    account = await live.broker.client.get(f"/v1/accounts/{reference}", headers=headers)
    answers["get"] = account.status_code, account.json().get("subject", account.json().get("code"))
    return answers


@pytest.mark.parametrize("attacker_first", [False, True], ids=["victim-first", "attacker-first"])
async def test_an_unverified_email_cannot_shadow_a_verified_one(
    live: Live, attacker_first: bool
) -> None:
    """Attack 3: an account whose ID token says `A@EXAMPLE.ORG`, unverified."""
    live.provider.state.add_user(VICTIM)
    live.provider.state.add_user(
        "mallory@evil.example", email_claim="A@EXAMPLE.ORG", email_verified=False
    )
    order = ["mallory@evil.example", VICTIM]
    for login in order if attacker_first else reversed(order):
        assert (await live.connect(login)).status_code == 200
    victim, attacker = subject_of(live, VICTIM), subject_of(live, "mallory@evil.example")
    headers = await live.headers()
    for _ in range(3):
        for reference in (VICTIM, "A@EXAMPLE.ORG", "a@Example.Org"):
            answers = await by_email_answers(live, reference)
            assert answers["token"] == (200, None)
            assert answers["messages"][0] == 200
            assert answers["get"] == (200, victim)
        # Refreshing anyone, the attacker last, changes nothing.
        assert (await token(live, victim, headers, force_refresh="true")).status_code == 200
        assert (await token(live, attacker, headers, force_refresh="true")).status_code == 200
    stored = await live.stored(attacker)
    assert (stored.email, stored.email_verified) == (VICTIM, False)
    listing = await live.broker.client.get(
        "/v1/accounts", params={"email": "A@example.org"}, headers=headers
    )
    assert {(a["subject"], a["email_verified"]) for a in listing.json()["items"]} == {
        (victim, True),
        (attacker, False),
    }
    deleted = await live.broker.client.delete("/v1/accounts/A@EXAMPLE.ORG", headers=headers)
    assert deleted.status_code == 200
    assert [a.subject for a in await rows(live.broker, Account)] == [attacker]
    # The unverified holder is left, reachable by subject only.
    assert (await by_email_answers(live, VICTIM))["get"] == (404, "account_not_found")
    assert (await token(live, attacker, headers)).status_code == 200


async def test_two_verified_holders_make_an_email_ambiguous(live: Live) -> None:
    """An address that moved between Google accounts names neither of them."""
    assert (await live.connect("alice@example.com")).status_code == 200
    headers = await live.headers()
    first = await token(live, "alice@example.com", headers)  # cached under the email now
    assert first.status_code == 200
    live.provider.state.add_user("alice-new@example.com", email_claim="Alice@Example.com")
    assert (await live.connect("alice-new@example.com")).status_code == 200
    holders = sorted(
        [subject_of(live, "alice@example.com"), subject_of(live, "alice-new@example.com")]
    )
    answers = await by_email_answers(live, "alice@example.com")
    assert answers == {
        "token": (409, "ambiguous_account"),
        "messages": (409, "ambiguous_account"),
        "get": (409, "ambiguous_account"),
    }
    ambiguous = await live.broker.client.get("/v1/accounts/ALICE@example.com", headers=headers)
    assert ambiguous.json()["subjects"] == holders
    refused = await live.broker.client.delete("/v1/accounts/alice@example.com", headers=headers)
    assert refused.status_code == 409
    for subject in holders:  # each still answers by subject
        assert (await token(live, subject, headers)).status_code == 200
    assert (
        await live.broker.client.delete(f"/v1/accounts/{holders[0]}", headers=headers)
    ).status_code == 200
    assert (await by_email_answers(live, "alice@example.com"))["get"] == (200, holders[1])


# --------------------------------------------------------------------------- 4. RP checks


async def test_callback_iss_must_name_the_configured_issuer(live: Live) -> None:
    started = await live.start(return_to=RETURN_TO)
    answer = await live.consent(started["authorization_url"])
    assert answer["iss"] == live.provider.url  # the sandbox says who answered (RFC 9207)
    live.provider.state.calls.clear()
    mixed_up = await live.callback({**answer, "iss": "https://evil.example"})
    assert query(mixed_up.headers["location"]) == {
        "authorization": started["id"],
        "status": "failed",
        "error": "issuer_mismatch",
    }
    assert live.provider.state.calls["token:authorization_code"] == 0  # nothing exchanged
    assert await rows(live.broker, Account) == []
    replay = await live.callback(answer)  # the state is spent
    assert replay.status_code == 400
    assert "invalid_state" in replay.text

    # Without iss (providers that do not send it), the flow works as before.
    started = await live.start()
    answer = await live.consent(started["authorization_url"])
    assert (await live.callback({k: v for k, v in answer.items() if k != "iss"})).status_code == 200


async def test_multi_audience_id_tokens_need_azp_to_be_this_client(live: Live) -> None:
    client = next(iter(live.provider.state.clients.values()))
    client.extra_audiences = ["other-client.apps.googleusercontent.com"]
    client.azp = "other-client.apps.googleusercontent.com"
    response = await live.connect("alice@example.com")
    assert response.status_code == 502
    assert "upstream_error" in response.text
    assert "azp" in response.text
    assert await rows(live.broker, Account) == []

    client.azp = None  # azp is this client again
    assert (await live.connect("alice@example.com")).status_code == 200


async def test_discovery_announces_the_callback_iss(provider: Provider, live: Live) -> None:
    document = (await live.browser.get(f"{provider.url}/.well-known/openid-configuration")).json()
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["issuer"] == provider.url


async def test_the_new_problems_are_documented(live: Live) -> None:
    from pathlib import Path

    from token_broker.errors import (
        AccountMismatch,
        AmbiguousAccount,
        AuthorizationNotFound,
        InvalidLink,
        IssuerMismatch,
    )

    openapi = (await live.broker.client.get("/openapi.json")).text
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for problem in (
        AccountMismatch, AmbiguousAccount, AuthorizationNotFound, InvalidLink, IssuerMismatch
    ):  # fmt: skip
        assert f"`{problem.code}`" in openapi, problem.code
        assert f"| `{problem.code}` | {problem.status} |" in readme, problem.code


async def test_links_signed_before_a_key_rotation_still_open(live: Live) -> None:
    new_entry = Keyring.generate_entry("k2")
    register_secret(new_entry.split(":", 1)[1])
    web = live.broker.app.state.web

    def links(spec: str) -> ReauthorizationLinks:
        return ReauthorizationLinks(
            authorizations=web.authorizations,
            database=live.broker.state.database,
            keyring=Keyring.parse(spec),
            endpoint="https://broker.example/v1/oauth/reauthorize",
            lifetime_seconds=600,
        )

    signed_before = links(TEST_KEYS).url(account_id=None, login_hint="x@example.com", client_id="c")
    rotated = links(f"{new_entry},{TEST_KEYS}")  # the new key first, the old one kept
    assert rotated.read(query(signed_before)["link"]).login_hint == "x@example.com"
    signed_after = rotated.url(account_id=None, login_hint=None, client_id="c")
    only_new = links(new_entry)
    assert only_new.read(query(signed_after)["link"]).client_id == "c"
    with pytest.raises(InvalidLink):
        only_new.read(query(signed_before)["link"])  # the old key removed: its links end


async def test_a_flow_started_by_an_older_replica_still_finishes(live: Live) -> None:
    """During a rolling upgrade, an old replica writes states without id or nonce."""
    started = await live.start(return_to=RETURN_TO)
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(OAuthState).values(authorization_id=None, nonce_hash=None)
        )
        await session.execute(sa.delete(Authorization))  # type: ignore[call-overload]
    answer = await live.consent(started["authorization_url"])
    response = await live.callback(answer)
    returned = query(response.headers["location"])
    assert returned["status"] == "connected"
    (outcome,) = await rows(live.broker, Authorization)
    assert outcome.id == returned["authorization"]
    assert outcome.status == "connected"
