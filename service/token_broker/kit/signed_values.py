"""Opaque, tamper-evident values handed to callers to give back later (cursors): claims + MAC.

A value reads `<kid>.<base64url(JSON claims)>.<base64url(MAC)>`: the MAC is
HMAC-SHA256 (first 128 bits) over the purpose and everything before it, under the
key `kid` names. The purpose (`"accounts"`, ...) is signed too, so a value made for
one use is refused for any other. Keys come from configuration (the broker derives
them from its keyring, one per key id), never per process: every replica, and every
restart, accepts every other's values; the first key signs and every key verifies,
so a key rotation breaks no value in flight. The claims can be read by whoever holds
a value: they give integrity, not secrecy. Keys never appear in a repr, a log or an
error, and a value that is not one this signer made says nothing about why.

Usage: `signer.sign("accounts", {...})`, then `signer.verify("accounts", value)`,
which returns the claims or raises `NotSigned`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["NotSigned", "ValueSigner"]

_MAC_BYTES = 16
_PART = re.compile(r"\A[A-Za-z0-9_-]+\Z")


class NotSigned(Exception):
    """Not a value this signer made for this purpose: malformed, altered, or foreign."""


class ValueSigner:
    __slots__ = ("_keys", "primary")

    def __init__(self, keys: Mapping[str, bytes], *, primary: str) -> None:
        if primary not in keys:
            raise ValueError("the primary key id is not among the keys")
        self._keys = dict(keys)
        self.primary = primary

    def __repr__(self) -> str:
        return f"ValueSigner(kids={list(self._keys)!r}, primary={self.primary!r})"

    def sign(self, purpose: str, claims: Mapping[str, Any]) -> str:
        payload = _encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signed = f"{self.primary}.{payload}"
        return f"{signed}.{_encode(self._mac(self.primary, purpose, signed))}"

    def verify(self, purpose: str, value: str) -> dict[str, Any]:
        """The claims of a value signed for `purpose`; `NotSigned` for anything else."""
        parts = value.split(".")
        if len(parts) != 3 or not all(_PART.match(part) for part in parts):
            raise NotSigned()
        kid, payload, mac = parts
        if kid not in self._keys:
            raise NotSigned()
        if not hmac.compare_digest(_decode(mac), self._mac(kid, purpose, f"{kid}.{payload}")):
            raise NotSigned()
        try:
            claims = json.loads(_decode(payload))
        except (ValueError, UnicodeDecodeError):
            raise NotSigned() from None
        if not isinstance(claims, dict):
            raise NotSigned()
        return claims

    def _mac(self, kid: str, purpose: str, signed: str) -> bytes:
        message = f"{purpose}|{signed}".encode()
        return hmac.new(self._keys[kid], message, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise NotSigned() from None
