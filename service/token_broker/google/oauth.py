"""Google's OAuth 2.0 / OpenID Connect endpoints: authorize URL, token, revoke, userinfo, ID token.

authlib supplies the protocol pieces (grant URI, PKCE challenge, random tokens),
joserfc the JOSE validation; transport is the shared httpx client (through
`Upstream`), so every request is visible to respx in tests. Works with any
standards-compliant OAuth 2.0 / OIDC server configured through the endpoint settings.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, SecretStr, ValidationError, field_validator

from token_broker.google.discovery import ProviderEndpoints
from token_broker.google.transport import Upstream, UpstreamProtocolError, json_object
from token_broker.kit.clock import utcnow
from token_broker.settings import GOOGLE_ISSUERS, Settings, is_google_issuer

MAX_TOKEN_LIFETIME = 86_400
# Google rotates its signing keys (about daily), so an unknown `kid` refetches the key set;
# a forged kid must not make every request refetch, so at most once per this interval.
JWKS_REFETCH_INTERVAL_SECONDS = 10.0


class OAuthError(Exception):
    """The token endpoint answered an OAuth error (RFC 6749 section 5.2)."""

    def __init__(self, error: str, *, status: int, subtype: str | None = None) -> None:
        self.error = error
        self.status = status
        self.subtype = subtype
        super().__init__(f"token endpoint: HTTP {status} {error}")


class IdTokenInvalid(Exception):
    """The ID token failed signature or claim validation (reason only, never the token)."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A successful token endpoint response."""

    access_token: SecretStr
    token_type: str
    expires_in: int
    received_at: datetime
    scopes: tuple[str, ...] | None
    refresh_token: SecretStr | None
    id_token: SecretStr | None
    # Set only for time-based access: the refresh token's remaining lifetime (Google's
    # web-server guide, the token response: "only set when the user grants time-based
    # access").
    refresh_token_expires_in: int | None = None

    @property
    def expires_at(self) -> datetime:
        return self.received_at + timedelta(seconds=self.expires_in)

    @property
    def refresh_token_expires_at(self) -> datetime | None:
        if self.refresh_token_expires_in is None:
            return None
        return self.received_at + timedelta(seconds=self.refresh_token_expires_in)


class _TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    refresh_token_expires_in: int | None = None

    @field_validator("access_token")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty access_token")
        return value

    @field_validator("refresh_token_expires_in", mode="before")
    @classmethod
    def _lifetime_or_none(cls, value: Any) -> int | None:
        # An unusable lifetime is not a reason to refuse the token: it is ignored.
        if isinstance(value, bool) or not isinstance(value, int | str):
            return None
        try:
            seconds = int(value)
        except ValueError:
            return None
        return seconds if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class PkcePair:
    verifier: str
    challenge: str

    @classmethod
    def generate(cls) -> PkcePair:
        verifier = generate_token(64)
        return cls(verifier, create_s256_code_challenge(verifier))


class OAuthClient:
    def __init__(
        self, upstream: Upstream, settings: Settings, endpoints: ProviderEndpoints | None = None
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.endpoints = endpoints or ProviderEndpoints.configured(settings)
        self.client_id = settings.google_client_id or ""
        self._client_secret = settings.google_client_secret or SecretStr("")
        self._jwks: KeySet | None = None
        self._jwks_fetched_at = 0.0
        self._jwks_lock = asyncio.Lock()
        issuers = {self.endpoints.issuer}
        if is_google_issuer(self.endpoints.issuer):
            issuers.update(GOOGLE_ISSUERS)
        self.issuers = sorted(issuers)

    # ------------------------------------------------------------------ authorization

    def authorization_url(
        self,
        *,
        state: str,
        code_challenge: str,
        scopes: list[str] | tuple[str, ...],
        login_hint: str | None,
        redirect_uri: str,
        nonce: str,
    ) -> str:
        url: str = prepare_grant_uri(
            self.endpoints.auth_uri,
            client_id=self.client_id,
            response_type="code",
            redirect_uri=redirect_uri,
            scope=list(scopes),
            state=state,
            access_type="offline",
            prompt="consent",
            include_granted_scopes="true",
            login_hint=login_hint,
            code_challenge=code_challenge,
            code_challenge_method="S256",
            nonce=nonce,
        )
        return url

    # ------------------------------------------------------------------ token endpoint

    async def exchange_code(
        self, code: SecretStr, *, redirect_uri: str, code_verifier: SecretStr | None
    ) -> TokenGrant:
        form = {
            "grant_type": "authorization_code",
            "code": code.get_secret_value(),
            "redirect_uri": redirect_uri,
        }
        if code_verifier is not None:
            form["code_verifier"] = code_verifier.get_secret_value()
        return await self._token_request(form)

    async def refresh(self, refresh_token: SecretStr) -> TokenGrant:
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token.get_secret_value()}
        )

    async def _token_request(self, form: dict[str, str]) -> TokenGrant:
        headers = {"Accept": "application/json"}
        secret = self._client_secret.get_secret_value()
        if self.settings.token_endpoint_auth_method == "client_secret_basic":
            # RFC 6749 section 2.3.1: form-encode id and secret before Base64.
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form = {**form, "client_id": self.client_id, "client_secret": secret}
        received_at = utcnow()
        response = await self.upstream.send(
            "token", "POST", self.endpoints.token_uri, data=form, headers=headers
        )
        body = json_object(response)
        if response.status_code != 200:
            error = body.get("error")
            if not isinstance(error, str) or not error:
                raise UpstreamProtocolError(f"token endpoint: HTTP {response.status_code}")
            subtype = body.get("error_subtype")
            raise OAuthError(
                error,
                status=response.status_code,
                subtype=subtype if isinstance(subtype, str) else None,
            )
        try:
            parsed = _TokenResponse.model_validate(body)
        except ValidationError:
            raise UpstreamProtocolError(
                "token endpoint: 200 without a usable access_token"
            ) from None
        expires_in = parsed.expires_in
        if expires_in is None or expires_in <= 0:
            expires_in = self.settings.default_token_lifetime_seconds
        return TokenGrant(
            access_token=SecretStr(parsed.access_token),
            token_type=parsed.token_type,
            expires_in=min(expires_in, MAX_TOKEN_LIFETIME),
            received_at=received_at,
            scopes=tuple(parsed.scope.split()) if parsed.scope is not None else None,
            refresh_token=SecretStr(parsed.refresh_token) if parsed.refresh_token else None,
            id_token=SecretStr(parsed.id_token) if parsed.id_token else None,
            refresh_token_expires_in=parsed.refresh_token_expires_in,
        )

    # ------------------------------------------------------------------ revoke, userinfo

    async def revoke(self, token: SecretStr) -> bool:
        """True when the provider confirmed the grant is gone (or already was)."""
        response = await self.upstream.send(
            "revoke", "POST", self.endpoints.revoke_uri, data={"token": token.get_secret_value()}
        )
        if response.status_code == 200:
            return True
        if response.status_code == 400:
            # invalid_token: already expired or revoked, which is what was asked.
            body = json_object(response)
            return body.get("error") == "invalid_token"
        return False

    async def userinfo(self, access_token: SecretStr) -> dict[str, Any]:
        response = await self.upstream.send(
            "userinfo",
            "GET",
            self.endpoints.userinfo_uri,
            headers={"Authorization": f"Bearer {access_token.get_secret_value()}"},
        )
        if response.status_code != 200:
            raise UpstreamProtocolError(f"userinfo: HTTP {response.status_code}")
        return json_object(response)

    # ------------------------------------------------------------------ ID token

    async def verify_id_token(
        self, id_token: SecretStr, *, nonce_sha256: str | None = None
    ) -> dict[str, Any]:
        """Claims of a valid ID token, checked as OpenID Connect Core 3.1.3.7 asks.

        RS256 signature by the provider's JWKS, iss, aud, exp, iat; with several
        audiences, azp must be this client; with `nonce_sha256` (the SHA-256 hex of the
        nonce the authorization request sent), the nonce claim must match it.
        """
        keys = await self._keyset(refresh=False)
        try:
            try:
                token = jwt.decode(id_token.get_secret_value(), keys, algorithms=["RS256"])
            except InvalidKeyIdError:
                # The provider rotated its keys since the cache was filled.
                keys = await self._keyset(refresh=True)
                token = jwt.decode(id_token.get_secret_value(), keys, algorithms=["RS256"])
            leeway = self.settings.id_token_leeway_seconds
            jwt.JWTClaimsRegistry(
                leeway=leeway,
                iss={"essential": True, "values": self.issuers},
                aud={"essential": True, "value": self.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
            ).validate(token.claims)
        except JoseError as error:
            raise IdTokenInvalid(error.error) from None
        claims = token.claims
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise IdTokenInvalid("invalid_claim: sub")
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.client_id:
            # Google documents azp for hybrid apps (another client of the same project
            # presents the token); with several audiences it must name this client.
            raise IdTokenInvalid("invalid_claim: azp")
        if nonce_sha256 is not None:
            nonce = claims.get("nonce")
            if not isinstance(nonce, str) or not hmac.compare_digest(
                hashlib.sha256(nonce.encode()).hexdigest(), nonce_sha256
            ):
                raise IdTokenInvalid("invalid_claim: nonce")
        return claims

    async def _keyset(self, *, refresh: bool) -> KeySet:
        async with self._jwks_lock:
            age = time.monotonic() - self._jwks_fetched_at
            stale = self._jwks is None or age > self.settings.jwks_cache_seconds
            if stale or (refresh and age > JWKS_REFETCH_INTERVAL_SECONDS):
                response = await self.upstream.send("jwks", "GET", self.endpoints.jwks_uri)
                if response.status_code != 200:
                    raise UpstreamProtocolError(f"jwks: HTTP {response.status_code}")
                try:
                    self._jwks = KeySet.import_key_set(json_object(response))  # type: ignore[arg-type]
                except (JoseError, ValueError, KeyError, TypeError):
                    raise UpstreamProtocolError("jwks: not a JSON Web Key Set") from None
                self._jwks_fetched_at = time.monotonic()
            assert self._jwks is not None
            return self._jwks

    async def signing_keys(self, *, refresh: bool = False) -> KeySet:
        """The provider's published keys (Google's also sign Pub/Sub push tokens), cached;
        `refresh` refetches them, at most once per JWKS_REFETCH_INTERVAL_SECONDS."""
        return await self._keyset(refresh=refresh)
