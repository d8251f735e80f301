"""Signed tokens (cursors): tamper-evident, bound to a purpose, signed by any configured key."""

from __future__ import annotations

import pytest

from token_broker.kit.signed_tokens import BadSignedToken, TokenSigner
from token_broker.store.sealing import Keyring


def signer(spec: str) -> TokenSigner:
    return Keyring.parse(spec).token_signer()


OLD = Keyring.generate_entry("old")
NEW = Keyring.generate_entry("new")


def test_round_trip_and_every_alteration_refused() -> None:
    tokens = signer(OLD)
    token = tokens.sign("gmail-changes", {"a": "account-1", "h": "123"})
    assert tokens.verify("gmail-changes", token) == {"a": "account-1", "h": "123"}
    version, kid, payload, mac = token.split(".")
    for forged in (
        f"{version}.{kid}.{payload[:-1]}A.{mac}",
        f"{version}.{kid}.{payload}.{mac[:-2]}AA",
        f"v2.{kid}.{payload}.{mac}",
        f"{version}.other.{payload}.{mac}",
        token + ".x",
        "",
        "garbage",
    ):
        with pytest.raises(BadSignedToken):
            tokens.verify("gmail-changes", forged)
    with pytest.raises(BadSignedToken):
        tokens.verify("accounts-page", token)  # made for another purpose


def test_keys_rotate_without_breaking_tokens_in_flight() -> None:
    before = signer(OLD).sign("p", {"h": "1"})
    rotated = signer(f"{NEW},{OLD}")
    assert rotated.verify("p", before) == {"h": "1"}
    after = rotated.sign("p", {"h": "2"})
    assert after.split(".")[1] == "new"
    with pytest.raises(BadSignedToken):
        signer(OLD).verify("p", after)  # a replica without the new key refuses it
    with pytest.raises(BadSignedToken):
        signer(Keyring.generate_entry("old")).verify("p", before)  # same kid, other key


def test_no_key_material_in_repr() -> None:
    tokens = signer(OLD)
    assert repr(tokens) == "TokenSigner(kids=['old'], primary='old')"
    assert OLD.split(":")[1] not in repr(tokens)
