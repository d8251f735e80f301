"""Google's Cross-Account Protection (RISC): its configuration document, its signing keys, and
the validation of the security event tokens it posts to the broker.

What Google's guide requires of a receiver (developers.google.com/identity/protocols/risc,
"Decode and validate the security event token"):

- read the issuer (`issuer`) and the signing keys' URI (`jwks_uri`) from the RISC
  configuration document, https://accounts.google.com/.well-known/risc-configuration;
- take the signing key's id from the token's header and the key from that key set; a
  token whose key the set lacks "is likely invalid, and your endpoint should return HTTP
  error 400";
- verify the signature, that `aud` is one of the app's client ids, and that `iss` is the
  configuration's issuer (Google's example token says "https://accounts.google.com/",
  with the slash, unlike its ID tokens: it is compared as configured, never assumed);
- not `exp`: "security event tokens represent historical events and as such, don't
  expire". The broker bounds their age itself (`iat`, TOKEN_BROKER_RISC_MAX_AGE_SECONDS)
  and refuses a `jti` it has seen (services/risc.py): Google redelivers what it believes
  undelivered, so duplicates happen.

Refusals carry RFC 8935's error codes (invalid_request, invalid_key, invalid_issuer,
invalid_audience, authentication_failed). Signing keys rotate: an unknown `kid` refetches
the key set, at most once per JWKS_REFETCH_INTERVAL_SECONDS, so forged kids cannot make
every request fetch.

Event types (the guide's "Supported event types"): sessions-revoked, account-disabled
(`reason` hijacking or bulk-account), account-enabled, account-credential-change-required
and verification (`state`) under https://schemas.openid.net/secevent/risc/event-type/,
tokens-revoked and token-revoked (a refresh token named by `token_identifier_alg`
`prefix` or `hash_base64_sha512_sha512`) under .../secevent/oauth/event-type/. The RISC
profile's account-purged is understood too, though Google's guide does not list it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from token_broker.google.oauth import JWKS_REFETCH_INTERVAL_SECONDS
from token_broker.google.transport import Upstream, UpstreamProtocolError, json_object

RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
# Event type URI -> the broker's short name (grant_health.SecurityEventKind's values).
EVENT_TYPES: dict[str, str] = {
    RISC + "sessions-revoked": "sessions_revoked",
    OAUTH + "tokens-revoked": "tokens_revoked",
    OAUTH + "token-revoked": "token_revoked",
    RISC + "account-disabled": "account_disabled",
    RISC + "account-enabled": "account_enabled",
    RISC + "account-credential-change-required": "credential_change_required",
    RISC + "verification": "verification",
    RISC + "account-purged": "account_purged",
    # Earlier RISC drafts named the token events under risc/; some transmitters still do.
    RISC + "tokens-revoked": "tokens_revoked",
    RISC + "token-revoked": "token_revoked",
}
# What `token-broker risc register` asks Google for: every type its guide documents.
DOCUMENTED_EVENT_TYPES = (
    RISC + "sessions-revoked",
    OAUTH + "tokens-revoked",
    OAUTH + "token-revoked",
    RISC + "account-disabled",
    RISC + "account-enabled",
    RISC + "account-credential-change-required",
    RISC + "verification",
)
MAX_TOKEN_LENGTH = 16_384


class SecurityEventTokenInvalid(Exception):
    """A refused security event token: RFC 8935's `err` code and a description (no token)."""

    def __init__(self, err: str, description: str) -> None:
        self.err = err
        self.description = description
        super().__init__(f"{err}: {description}")


@dataclass(frozen=True)
class RiscConfiguration:
    issuer: str
    jwks_uri: str


class RiscVerifier:
    """Validates security event tokens as Google's guide requires (signature, iss, aud)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        configuration_url: str,
        audiences: frozenset[str],
        cache_seconds: float,
    ) -> None:
        self.upstream = upstream
        self.configuration_url = configuration_url
        self.audiences = audiences
        self.cache_seconds = cache_seconds
        self._configuration: RiscConfiguration | None = None
        self._configuration_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._lock = asyncio.Lock()

    async def configuration(self) -> RiscConfiguration:
        """The RISC configuration document (cached; raises TransientError or
        UpstreamProtocolError when it cannot be had)."""
        async with self._lock:
            return await self._configuration_locked()

    async def _configuration_locked(self) -> RiscConfiguration:
        fresh = time.monotonic() - self._configuration_at <= self.cache_seconds
        if self._configuration is not None and fresh:
            return self._configuration
        response = await self.upstream.send("risc_configuration", "GET", self.configuration_url)
        if response.status_code != 200:
            raise UpstreamProtocolError(f"risc configuration: HTTP {response.status_code}")
        document = json_object(response)
        issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
        if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str):
            raise UpstreamProtocolError("risc configuration: no issuer or jwks_uri")
        if self._configuration is not None and self._configuration.jwks_uri != jwks_uri:
            self._keys = None
        self._configuration = RiscConfiguration(issuer, jwks_uri)
        self._configuration_at = time.monotonic()
        return self._configuration

    async def _key_set(self, *, refresh: bool) -> tuple[RiscConfiguration, KeySet]:
        async with self._lock:
            configuration = await self._configuration_locked()
            age = time.monotonic() - self._keys_at
            stale = self._keys is None or age > self.cache_seconds
            if stale or (refresh and age > JWKS_REFETCH_INTERVAL_SECONDS):
                response = await self.upstream.send("risc_jwks", "GET", configuration.jwks_uri)
                if response.status_code != 200:
                    raise UpstreamProtocolError(f"risc jwks: HTTP {response.status_code}")
                try:
                    self._keys = KeySet.import_key_set(json_object(response))  # type: ignore[arg-type]
                except (JoseError, ValueError, KeyError, TypeError):
                    raise UpstreamProtocolError("risc jwks: not a JSON Web Key Set") from None
                self._keys_at = time.monotonic()
            assert self._keys is not None
            return configuration, self._keys

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, if Google signed it for this broker; else SecurityEventTokenInvalid.

        Malformed tokens are refused before anything is fetched.
        """
        _check_shape(token)
        configuration, keys = await self._key_set(refresh=False)
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=["RS256"])
            except InvalidKeyIdError:
                configuration, keys = await self._key_set(refresh=True)
                decoded = jwt.decode(token, keys, algorithms=["RS256"])
        except InvalidKeyIdError:
            raise SecurityEventTokenInvalid(
                "invalid_key", "no key of the issuer's key set has the token's kid"
            ) from None
        except BadSignatureError:
            raise SecurityEventTokenInvalid(
                "authentication_failed", "the signature does not verify"
            ) from None
        except (JoseError, ValueError, TypeError):
            raise SecurityEventTokenInvalid("invalid_request", "not a signed JWT") from None
        claims = decoded.claims
        if claims.get("iss") != configuration.issuer:
            raise SecurityEventTokenInvalid(
                "invalid_issuer", "iss is not the issuer of the RISC configuration"
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(value, str) and value in self.audiences for value in audiences):
            raise SecurityEventTokenInvalid("invalid_audience", "aud names none of our client ids")
        return claims


def _check_shape(token: str) -> None:
    """A compact JWS whose header names RS256 and a key id; nothing fetched to find out."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise SecurityEventTokenInvalid("invalid_request", "the body is not a security event token")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise SecurityEventTokenInvalid("invalid_request", "not a compact JWS (three parts)")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise SecurityEventTokenInvalid("invalid_request", "the header is not JSON") from None
    if not isinstance(header, dict):
        raise SecurityEventTokenInvalid("invalid_request", "the header is not a JSON object")
    if header.get("alg") != "RS256":
        raise SecurityEventTokenInvalid("invalid_key", "alg must be RS256")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise SecurityEventTokenInvalid("invalid_key", "the header names no kid")
