import base64

import pytest
from pydantic import SecretStr

from token_broker.store.sealing import DecryptionError, Keyring, KeyringError, SecretColumn

TOKENS = SecretColumn("accounts", "refresh_token")
OTHER_COLUMN = SecretColumn("accounts", "access_token")


def key(kid: str, fill: bytes = b"\x01") -> str:
    return f"{kid}:{base64.b64encode(fill * 32).decode()}"


def test_seal_and_open_round_trip() -> None:
    keyring = Keyring.parse(key("k1"))
    sealed = keyring.seal("1//refresh-token", column=TOKENS, row="row-1")
    assert sealed.startswith("tb1.k1.")
    assert "refresh-token" not in sealed
    opened = keyring.open(sealed, column=TOKENS, row="row-1")
    assert isinstance(opened, SecretStr)
    assert opened.get_secret_value() == "1//refresh-token"


def test_each_seal_uses_a_fresh_nonce() -> None:
    keyring = Keyring.parse(key("k1"))
    assert keyring.seal("same", column=TOKENS, row="r") != keyring.seal(
        "same", column=TOKENS, row="r"
    )


@pytest.mark.parametrize(
    ("column", "row"),
    [
        (TOKENS, "row-2"),
        (OTHER_COLUMN, "row-1"),
        (SecretColumn("oauth_states", "refresh_token"), "row-1"),
    ],
)
def test_value_copied_elsewhere_does_not_open(column: SecretColumn, row: str) -> None:
    keyring = Keyring.parse(key("k1"))
    sealed = keyring.seal("1//refresh-token", column=TOKENS, row="row-1")
    with pytest.raises(DecryptionError, match="does not authenticate") as raised:
        keyring.open(sealed, column=column, row=row)
    assert "refresh-token" not in str(raised.value)


def test_tampered_value_does_not_open() -> None:
    keyring = Keyring.parse(key("k1"))
    sealed = keyring.seal("secret", column=TOKENS, row="r")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(DecryptionError):
        keyring.open(flipped, column=TOKENS, row="r")
    with pytest.raises(DecryptionError, match="not a tb1 sealed value"):
        keyring.open("plaintext-token", column=TOKENS, row="r")


def test_removed_key_is_named_in_the_error_without_key_material() -> None:
    old = Keyring.parse(key("old", b"\x02"))
    sealed = old.seal("secret", column=TOKENS, row="r")
    new = Keyring.parse(key("new", b"\x03"))
    with pytest.raises(DecryptionError) as raised:
        new.open(sealed, column=TOKENS, row="r")
    assert "'old'" in str(raised.value)
    assert "not in the keyring" in str(raised.value)
    assert base64.b64encode(b"\x02" * 32).decode() not in str(raised.value)


def test_rotating_in_a_new_primary_keeps_old_values_readable() -> None:
    before = Keyring.parse(key("k1", b"\x04"))
    sealed_old = before.seal("old-secret", column=TOKENS, row="r")
    after = Keyring.parse(",".join([key("k2", b"\x05"), key("k1", b"\x04")]))
    assert after.primary_kid == "k2"
    assert after.open(sealed_old, column=TOKENS, row="r").get_secret_value() == "old-secret"
    sealed_new = after.seal("new-secret", column=TOKENS, row="r")
    assert Keyring.key_id_of(sealed_new, TOKENS) == "k2"
    resealed = after.reseal(sealed_old, column=TOKENS, row="r")
    assert resealed is not None
    assert Keyring.key_id_of(resealed, TOKENS) == "k2"
    assert after.reseal(sealed_new, column=TOKENS, row="r") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("nokey", "not of the form"),
        ("k1:not-base64!!", "not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "expected 32"),
        (key("k1") + "," + key("k1"), "appears twice"),
        ("bad id:" + base64.b64encode(b"x" * 32).decode(), "invalid"),
    ],
)
def test_malformed_keyrings_are_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message) as raised:
        Keyring.parse(spec)
    assert base64.b64encode(b"\x01" * 32).decode() not in str(raised.value)


def test_generated_entries_parse_and_never_repeat() -> None:
    first, second = Keyring.generate_entry(), Keyring.generate_entry("mine")
    assert second.startswith("mine:")
    keyring = Keyring.parse(f"{first},{second}")
    assert keyring.key_ids == [first.split(":")[0], "mine"]
    assert first.split(":")[1] != second.split(":")[1]


def test_repr_shows_key_ids_only() -> None:
    keyring = Keyring.parse(key("k1"))
    assert repr(keyring) == "Keyring(kids=['k1'], primary='k1')"
    assert (
        repr(keyring.open(keyring.seal("s3cr3t", column=TOKENS, row="r"), column=TOKENS, row="r"))
        == "SecretStr('**********')"
    )
