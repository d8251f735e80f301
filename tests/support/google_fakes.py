"""Google, faked with respx: ID tokens signed by a test key, token responses, the JWKS."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.brokers import TEST_CLIENT_ID

GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
SUBJECT = "109876543210987654321"
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "google-1", "alg": "RS256"})


def id_token(**overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": TEST_CLIENT_ID,
        "azp": TEST_CLIENT_ID,
        "sub": SUBJECT,
        "email": "alice@example.com",
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        **overrides,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "google-1"}, claims, SIGNING_KEY)


def token_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "access_token": "ya29.upstream-access-token",
        "expires_in": 3599,
        "refresh_token": "1//upstream-refresh-token",
        "scope": f"openid https://www.googleapis.com/auth/userinfo.email {GMAIL}",
        "token_type": "Bearer",
        "id_token": id_token(),
        **overrides,
    }
    return {k: v for k, v in body.items() if v is not None}


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
