"""Opaque, tamper-evident tokens handed to callers to give back later (cursors): claims + HMAC.

A token reads `v1.<kid>.<base64url(JSON claims)>.<base64url(MAC)>`, the MAC an
HMAC-SHA256 (first 128 bits) over the purpose and everything before it, under the key
named by `kid`. The purpose ("gmail-changes", ...) is part of what is signed, so a
token made for one use is refused for any other. Keys come from configuration (never
made per process, so every replica and restart accepts every other's tokens); the
first key signs, every key verifies, so keys rotate without breaking tokens in
flight. The claims are readable by whoever holds a token: they are for integrity,
not secrecy. Keys never appear in a repr, a log or an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

VERSION = "v1"
_MAC_BYTES = 16


class BadSignedToken(Exception):
    """Not a token this signer made for this purpose (malformed, altered, or unknown key)."""


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadSignedToken() from None


class TokenSigner:
    __slots__ = ("_keys", "primary")

    def __init__(self, keys: Mapping[str, bytes], primary: str) -> None:
        if primary not in keys:
            raise ValueError("the primary key id is not among the keys")
        self._keys = dict(keys)
        self.primary = primary

    def __repr__(self) -> str:
        return f"TokenSigner(kids={list(self._keys)!r}, primary={self.primary!r})"

    def _mac(self, kid: str, purpose: str, signed: str) -> bytes:
        message = f"{purpose}|{signed}".encode()
        return hmac.new(self._keys[kid], message, hashlib.sha256).digest()[:_MAC_BYTES]

    def sign(self, purpose: str, claims: Mapping[str, Any]) -> str:
        payload = _encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signed = f"{VERSION}.{self.primary}.{payload}"
        return f"{signed}.{_encode(self._mac(self.primary, purpose, signed))}"

    def verify(self, purpose: str, token: str) -> dict[str, Any]:
        """The claims of a token signed for `purpose`; raises BadSignedToken otherwise."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION or parts[1] not in self._keys:
            raise BadSignedToken()
        signed = ".".join(parts[:3])
        if not hmac.compare_digest(_decode(parts[3]), self._mac(parts[1], purpose, signed)):
            raise BadSignedToken()
        try:
            claims = json.loads(_decode(parts[2]))
        except (ValueError, UnicodeDecodeError):
            raise BadSignedToken() from None
        if not isinstance(claims, dict):
            raise BadSignedToken()
        return claims
