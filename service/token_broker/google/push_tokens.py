"""The OIDC token on a Cloud Pub/Sub push: signed by Google, for this endpoint, by our account.

Pub/Sub's authentication guide (https://cloud.google.com/pubsub/docs/authenticate-push-
subscriptions) and its sample verifier: the `Authorization: Bearer` JWT is signed by
Google's OAuth keys (the same published certificates as ID tokens, so the broker's
JWKS cache and its refetch on an unknown `kid` serve both), with `iss`
https://accounts.google.com (or accounts.google.com), `aud` the audience configured on
the subscription (by default its push endpoint URL), `email` the subscription's
service account with `email_verified` true, and `iat`/`exp` an hour apart. Tokens "may be
up to an hour old", and one token can come with several pushes: a token alone is not
single use (replays are refused by `services/gmail_push.py`, per message).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError

from token_broker.google.oauth import OAuthClient

Reason = Literal[
    "missing", "malformed", "signature", "issuer", "audience", "service_account", "expired",
    "not_yet_valid",
]  # fmt: skip


class PushTokenInvalid(Exception):
    """Why a push token was refused (a label for metrics and logs, never the token)."""

    def __init__(self, reason: Reason) -> None:
        self.reason = reason
        super().__init__(f"push token refused: {reason}")


class PushTokens:
    def __init__(
        self,
        oauth: OAuthClient,
        *,
        audience: str,
        service_account: str,
        leeway_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.oauth = oauth
        self.audience = audience
        self.service_account = service_account.lower()
        self.leeway = leeway_seconds
        self.clock = clock

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        """The claims of a valid push token from an Authorization header, or PushTokenInvalid."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise PushTokenInvalid("missing")
        claims = await self._signed_claims(token)
        if claims.get("iss") not in self.oauth.issuers:
            raise PushTokenInvalid("issuer")
        audience = claims.get("aud")
        if audience != self.audience and not (
            isinstance(audience, list) and self.audience in audience
        ):
            raise PushTokenInvalid("audience")
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() != self.service_account:
            raise PushTokenInvalid("service_account")
        if claims.get("email_verified") is not True:
            raise PushTokenInvalid("service_account")
        expires, issued = claims.get("exp"), claims.get("iat")
        if not isinstance(expires, int | float) or not isinstance(issued, int | float):
            raise PushTokenInvalid("malformed")
        now = self.clock()
        if now > expires + self.leeway:
            raise PushTokenInvalid("expired")
        if issued > now + self.leeway:
            raise PushTokenInvalid("not_yet_valid")
        return claims

    async def _signed_claims(self, token: str) -> dict[str, Any]:
        keys = await self.oauth.signing_keys()
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=["RS256"])
            except InvalidKeyIdError:
                # Google rotated its keys since they were fetched (or the kid is forged:
                # the refetch is rate limited either way).
                keys = await self.oauth.signing_keys(refresh=True)
                decoded = jwt.decode(token, keys, algorithms=["RS256"])
        except (BadSignatureError, InvalidKeyIdError):
            raise PushTokenInvalid("signature") from None
        except (JoseError, ValueError, TypeError):
            raise PushTokenInvalid("malformed") from None
        return dict(decoded.claims)
