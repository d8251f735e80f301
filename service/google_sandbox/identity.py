"""Who the user is, as Google tells it: ID token claims and userinfo answers.

Facts (Google's ID token reference, as quoted in google-auth-library's TokenPayload docs,
cloud.google.com/nodejs/docs/reference/google-auth-library/latest/google-auth-library/tokenpayload):

- `email` and `email_verified` are "provided only if your scope included the string email";
  `name`, `given_name` and `family_name` when the scope included `profile` (either spelling
  of each, see `scopes.py`).
- `at_hash`: "If the ID token is issued with an access token in the server flow, this is
  always included": base64url of the left half of SHA-256 of the access token (OpenID
  Connect Core 3.1.3.6, RS256).
- `nonce`: "the value of the nonce supplied by your app in the authentication request".
- OIDC userinfo answers `sub`; the v2 userinfo (`/oauth2/v2/userinfo`) answers `id` and
  `verified_email` instead (GOOGLE.md, "Identity").
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from joserfc import jwt

from google_sandbox.keys import SigningKey
from google_sandbox.records import SandboxClient, SandboxUser
from google_sandbox.scopes import USERINFO_EMAIL, USERINFO_PROFILE

ID_TOKEN_LIFETIME = 3600


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def _profile(user: SandboxUser) -> dict[str, str]:
    given, _, family = user.name.partition(" ")
    claims = {"name": user.name, "given_name": given}
    if family:
        claims["family_name"] = family
    return claims


def id_token(
    key: SigningKey,
    *,
    issuer: str,
    client: SandboxClient,
    user: SandboxUser,
    scopes: set[str],
    access_token: str,
    nonce: str | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        # A client's extra audiences make a multi-audience token, whose `azp` names the
        # client that asked (see oauth.py's docstring).
        "azp": client.azp or client.client_id,
        "aud": [client.client_id, *client.extra_audiences]
        if client.extra_audiences
        else client.client_id,
        "sub": user.sub,
        "at_hash": at_hash(access_token),
        "iat": now,
        "exp": now + ID_TOKEN_LIFETIME,
    }
    if USERINFO_EMAIL in scopes:
        claims.update(email=user.claimed_email, email_verified=user.email_verified)
    if USERINFO_PROFILE in scopes:
        claims.update(_profile(user))
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key.jwk)


def oidc_userinfo(user: SandboxUser, scopes: set[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"sub": user.sub}
    if USERINFO_PROFILE in scopes:
        body.update(_profile(user))
    if USERINFO_EMAIL in scopes:
        body.update(email=user.claimed_email, email_verified=user.email_verified)
    return body


def v2_userinfo(user: SandboxUser, scopes: set[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"id": user.sub}
    if USERINFO_EMAIL in scopes:
        body.update(email=user.claimed_email, verified_email=user.email_verified)
    if USERINFO_PROFILE in scopes:
        body.update(_profile(user))
    return body
