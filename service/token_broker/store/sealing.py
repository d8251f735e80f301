"""Secrets at rest: AES-256-GCM under a keyring, each value bound to its table, column and row.

A sealed value reads `tb1.<kid>.<base64url(nonce || ciphertext || tag)>`: the format
version and key id travel with the value, so several keys can be loaded at once
(the first encrypts, all decrypt) and `keys rotate` can tell what to re-encrypt.
The associated data names the format, key id, table, column and row, so a value
copied to another row, column or table does not decrypt.

A keyring remembers what it failed to open (by key id, never a value), so `/readyz`
can say a replica lacks a key the stored secrets use, and callers get the documented
503 `key_unavailable` naming the key id instead of a 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from token_broker.kit.clock import utcnow
from token_broker.kit.signed_tokens import TokenSigner
from token_broker.settings import ConfigurationError, Settings, env_name

log = logging.getLogger("token_broker.sealing")

FORMAT_VERSION = "tb1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_NONCE_BYTES = 12
_SIGNING_PURPOSE = "token-broker signed tokens v1"


class KeyringError(Exception):
    """The keyring specification is unusable. Messages never contain key material."""


class DecryptionError(Exception):
    """A stored value cannot be opened. Messages name the key id and binding, never data.

    `key_id` names the key the value says it is sealed with (None when the value is not
    even a sealed value); `missing` says that key is not in this keyring at all.
    """

    def __init__(self, message: str, *, key_id: str | None, missing: bool = False) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.missing = missing


@dataclass
class OpenFailures:
    """Stored values a keyring could not open since the process started, by key id.

    `missing`: values sealed with a key this keyring lacks (it cannot gain one without a
    restart, so this stays). `rejected`: values that did not authenticate under a key it
    has (altered, copied from elsewhere) or were not sealed values, with when it last
    happened (monotonic seconds).
    """

    missing: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, tuple[int, float]] = field(default_factory=dict)

    def note(self, error: DecryptionError) -> None:
        kid = error.key_id or "?"
        if error.missing:
            self.missing[kid] = self.missing.get(kid, 0) + 1
        else:
            count, _ = self.rejected.get(kid, (0, 0.0))
            self.rejected[kid] = (count + 1, time.monotonic())


@dataclass(frozen=True, slots=True)
class SecretColumn:
    """Where a sealed value lives; part of its associated data."""

    table: str
    column: str

    def associated_data(self, kid: str, row: str) -> bytes:
        return f"{FORMAT_VERSION}|{kid}|{self.table}|{self.column}|{row}".encode()


class Keyring:
    """AES-256-GCM keys by id. The first key is primary: it seals; every key opens."""

    __slots__ = ("_ciphers", "_material", "failures", "primary_kid")

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyringError("the keyring is empty; expected at least one kid:base64key")
        self._ciphers: dict[str, AESGCM] = {}
        for kid, key in keys:
            if not _KEY_ID.match(kid):
                raise KeyringError(
                    f"key id {kid[:40]!r} is invalid; expected 1-40 of A-Z a-z 0-9 _ -"
                )
            if kid in self._ciphers:
                raise KeyringError(f"key id {kid!r} appears twice")
            if len(key) != 32:
                raise KeyringError(f"key {kid!r} is {len(key)} bytes; expected 32 (AES-256)")
            # One AESGCM object per key: building it per call triples the cost of a decrypt.
            self._ciphers[kid] = AESGCM(key)
        self._material = dict(keys)
        self.primary_kid = keys[0][0]
        self.failures = OpenFailures()

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self._ciphers)!r}, primary={self.primary_kid!r})"

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def derive(self, purpose: str) -> dict[str, bytes]:
        """A 32-byte key per key id for `purpose` (HKDF-SHA256), independent of the sealing key.

        Every replica with the same keyring derives the same keys, and a key rotation
        keeps the old ids' derived keys for as long as the old keys stay loaded.
        """
        return {
            kid: HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()
            ).derive(key)
            for kid, key in self._material.items()
        }

    def token_signer(self) -> TokenSigner:
        """Signs cursors and other tokens callers give back, with keys from this keyring."""
        return TokenSigner(self.derive(_SIGNING_PURPOSE), self.primary_kid)

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """Parse `kid:base64key[,kid:base64key...]`; errors say which entry, never the key."""
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate((part.strip() for part in spec.split(",")), start=1):
            if not entry:
                continue
            kid, separator, encoded = entry.partition(":")
            if not separator or not kid:
                raise KeyringError(f"entry {position} is not of the form kid:base64key")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"key {kid[:40]!r} is not valid base64") from None
            keys.append((kid, key))
        return cls(keys)

    @staticmethod
    def generate_entry(kid: str | None = None) -> str:
        """A new `kid:base64key` entry (32 random bytes), ready to prepend to the keyring."""
        kid = kid or "k" + utcnow().strftime("%Y%m%d") + secrets.token_hex(2)
        if not _KEY_ID.match(kid):
            raise KeyringError(f"key id {kid[:40]!r} is invalid; expected 1-40 of A-Z a-z 0-9 _ -")
        return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"

    def seal(self, plaintext: str, *, column: SecretColumn, row: str) -> str:
        kid = self.primary_kid
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(
            nonce, plaintext.encode(), column.associated_data(kid, row)
        )
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return f"{FORMAT_VERSION}.{kid}.{body}"

    def open(self, stored: str, *, column: SecretColumn, row: str) -> SecretStr:
        try:
            return self._open(stored, column=column, row=row)
        except DecryptionError as error:
            self.failures.note(error)
            raise

    def _open(self, stored: str, *, column: SecretColumn, row: str) -> SecretStr:
        kid, payload = self._split(stored, column)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(
                f"{column.table}.{column.column} is sealed with key {kid!r}, "
                "which is not in the keyring",
                key_id=kid,
                missing=True,
            )
        try:
            plaintext = cipher.decrypt(
                payload[:_NONCE_BYTES], payload[_NONCE_BYTES:], column.associated_data(kid, row)
            )
        except InvalidTag:
            raise DecryptionError(
                f"{column.table}.{column.column} does not authenticate under key {kid!r} for "
                "this row: it was copied from elsewhere, altered, or the key material changed",
                key_id=kid,
            ) from None
        return SecretStr(plaintext.decode())

    def reseal(self, stored: str, *, column: SecretColumn, row: str) -> str | None:
        """The value sealed under the primary key, or None if it already is."""
        if self.key_id_of(stored, column) == self.primary_kid:
            return None
        return self.seal(
            self.open(stored, column=column, row=row).get_secret_value(), column=column, row=row
        )

    @staticmethod
    def key_id_of(stored: str, column: SecretColumn) -> str:
        return Keyring._split(stored, column)[0]

    @staticmethod
    def _split(stored: str, column: SecretColumn) -> tuple[str, bytes]:
        version, _, rest = stored.partition(".")
        kid, _, body = rest.partition(".")
        if version != FORMAT_VERSION or not _KEY_ID.fullmatch(kid) or not body:
            raise DecryptionError(
                f"{column.table}.{column.column} is not a {FORMAT_VERSION} sealed value",
                key_id=None,
            )
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionError(
                f"{column.table}.{column.column} has a corrupt sealed value", key_id=kid
            ) from None
        if len(payload) <= _NONCE_BYTES + 16:
            raise DecryptionError(
                f"{column.table}.{column.column} has a truncated sealed value", key_id=kid
            )
        return kid, payload


def keyring_from_settings(settings: Settings) -> Keyring:
    """The keyring `TOKEN_BROKER_ENCRYPTION_KEYS` names: the one place it is parsed.

    In development with no keys set, a throwaway key (said loudly); anywhere else a
    missing or malformed value is a `ConfigurationError` naming the variable.
    """
    variable = env_name("encryption_keys")
    if settings.encryption_keys is None:
        if not settings.is_development:
            raise ConfigurationError(
                [
                    f"{variable}: required outside development; expected comma-separated "
                    "kid:base64(32 bytes) (make one with `token-broker keys generate`)"
                ]
            )
        log.warning(
            "no %s set: using a throwaway key; secrets stored now will not open after a restart",
            variable,
        )
        return Keyring.parse(Keyring.generate_entry("ephemeral"))
    try:
        return Keyring.parse(settings.encryption_keys.get_secret_value())
    except KeyringError as error:
        raise ConfigurationError([f"{variable}: {error}"]) from None
