"""Cursors are opaque and tamper-evident: the broker accepts only the ones it issued.

Generated variants: every single-character alteration of a real cursor, truncations,
cursors re-encoded with other claims (a naive datetime, a bad id, another filter),
signed for another purpose or under another key, and arbitrary text. Each is 400
`invalid_cursor`, never a 500. A cursor stays good across replicas and restarts (its
key comes from the keyring) and across a key rotation.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.support.brokers import TEST_KEYS, Broker
from tests.support.hygiene import register_secret
from token_broker.kit.clock import utcnow
from token_broker.kit.signed_tokens import BadSignedToken, TokenSigner
from token_broker.services.api_keys import Permission
from token_broker.settings import Settings
from token_broker.store.models import Account
from token_broker.store.repositories import AccountRepository
from token_broker.store.sealing import Keyring

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
NEW_KEY = register_secret(Keyring.generate_entry("rotated1"))
register_secret(NEW_KEY.split(":", 1)[1])


def signer(seed: bytes = b"\x01", kid: str = "k1") -> TokenSigner:
    return TokenSigner({kid: seed * 32}, kid)


@given(claims=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)))
@settings(max_examples=200, deadline=None, database=None)
def test_a_value_verifies_for_its_purpose_only(claims: dict[str, Any]) -> None:
    value = signer().sign("accounts", claims)
    assert signer().verify("accounts", value) == claims
    for wrong in (
        lambda: signer().verify("changes", value),
        lambda: signer(b"\x02").verify("accounts", value),
        lambda: signer(kid="k2").verify("accounts", value),
    ):
        try:
            wrong()
        except BadSignedToken:
            continue
        raise AssertionError("verified with the wrong purpose or key")


@given(data=st.data())
@settings(max_examples=300, deadline=None, database=None)
def test_any_alteration_is_refused(data: st.DataObject) -> None:
    value = signer().sign("accounts", {"at": "2026-01-01T00:00:00+00:00", "id": "x"})
    at = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != value[at]))
    altered = value[:at] + replacement + value[at + 1 :]
    truncated = value[: data.draw(st.integers(0, len(value) - 1))]
    for candidate in (altered, truncated):
        try:
            claims = signer().verify("accounts", candidate)
        except BadSignedToken:
            continue
        # base64url's last character may carry unused bits: the same bytes, the same claims
        assert claims == signer().verify("accounts", value)


def test_keys_rotate_without_breaking_values_and_never_show() -> None:
    old = signer(b"\x01", "old")
    rotated = TokenSigner({"new": b"\x02" * 32, "old": b"\x01" * 32}, "new")
    assert rotated.verify("accounts", old.sign("accounts", {"n": 1})) == {"n": 1}
    assert "\\x01" not in repr(rotated)
    assert "AQEB" not in repr(rotated)


async def _add_accounts(broker: Broker, count: int) -> list[str]:
    now = utcnow()
    ids = []
    async with broker.state.database.transaction() as session:
        for index in range(count):
            account = Account(
                id=str(uuid.uuid4()), provider="google", subject=f"sub-{index}",
                email=f"user{index}@example.com", email_verified=True,
                created_at=now + timedelta(microseconds=index % 3), updated_at=now,
                status="active" if index % 2 else "revoked",
            )  # fmt: skip
            await AccountRepository(session).save(account)
            ids.append(account.id)
    return ids


async def walk(broker: Broker, headers: dict[str, str], query: str, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        page = await broker.client.get(
            f"/v1/accounts?limit={limit}{query}{suffix}", headers=headers
        )
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return seen


async def test_a_walk_sees_every_account_once_on_any_replica(
    broker: Broker,
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
) -> None:
    ids = await _add_accounts(broker, 13)
    headers = await broker.headers(Permission.ACCOUNTS_READ)
    for limit in (1, 2, 5, 13, 100):
        assert sorted(await walk(broker, headers, "", limit)) == sorted(ids)
    assert len(await walk(broker, headers, "&status=active", 2)) == 6
    # Another replica (or this one restarted), then one after a key rotation, carry on
    # a walk this one started.
    first = (await broker.client.get("/v1/accounts?limit=4", headers=headers)).json()
    other = await broker_factory(settings_factory())
    rotated = await broker_factory(
        settings_factory(encryption_keys=SecretStr(f"{NEW_KEY},{TEST_KEYS}"))
    )
    for replica in (other, rotated):
        rest = await replica.client.get(
            f"/v1/accounts?limit=100&cursor={first['next_cursor']}", headers=headers
        )
        assert rest.status_code == 200, rest.text
        assert len(first["items"]) + len(rest.json()["items"]) == 13


def forged(claims: Any) -> str:
    """A cursor as the old format made them: base64url JSON, no signature."""
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


@pytest.fixture
async def issued(broker: Broker) -> tuple[dict[str, str], str]:
    """A reader's headers and a cursor the broker issued (for a walk without filters)."""
    await _add_accounts(broker, 3)
    headers = await broker.headers(Permission.ACCOUNTS_READ)
    page = await broker.client.get("/v1/accounts?limit=1", headers=headers)
    return headers, page.json()["next_cursor"]


@given(data=st.data())
@EXAMPLES
async def test_a_cursor_the_broker_did_not_issue_is_400(
    broker: Broker, issued: tuple[dict[str, str], str], data: st.DataObject
) -> None:
    headers, cursor = issued
    version, kid, payload, mac = cursor.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    at = data.draw(st.integers(0, len(cursor) - 1))
    candidate = data.draw(
        st.one_of(
            st.just(cursor[:at] + ("A" if cursor[at] != "A" else "B") + cursor[at + 1 :]),
            st.just(cursor[:at]).filter(bool),
            st.just(forged(["2026-01-01T00:00:00", str(uuid.uuid4())])),  # naive datetime
            st.builds(
                lambda c: f"{version}.{kid}.{forged(c)}.{mac}",
                st.fixed_dictionaries(
                    {
                        "at": st.sampled_from(["2026-01-01T00:00:00", "x", claims["at"]]),
                        "id": st.sampled_from(["not-a-uuid", claims["id"], str(uuid.uuid4())]),
                        "f": st.sampled_from([[None, None], ["a@example.com", None], None]),
                    },
                ),
            ),
            st.just(signer().sign("accounts", claims)),  # another key
            st.just(cursor.replace(f".{kid}.", ".k9.", 1)),
            st.from_regex(r"\A[A-Za-z0-9_.-]{1,80}\Z"),
        )
    )
    query = data.draw(st.sampled_from(["", "&status=active", "&email=user1@example.com"]))
    response = await broker.client.get(
        f"/v1/accounts?limit=1&cursor={candidate}{query}", headers=headers
    )
    if candidate == cursor and not query:
        assert response.status_code == 200
        return
    assert response.status_code in (400, 422), (candidate, response.text[:200])
    assert response.json()["code"] in ("invalid_cursor", "validation_failed")
