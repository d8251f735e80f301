"""Google's RISC API: configuring the project's security event stream with a service account.

As Google's guide describes it (developers.google.com/identity/protocols/risc, "Register
your receiver"): calls carry a bearer JWT the service account signs with its private key
(RS256, header `kid` the key's id) with `iss` and `sub` its email, `aud`
https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService, `iat`, and
`exp` one hour later. Then:

- `POST /v1beta/stream:update` `{delivery: {delivery_method: ".../delivery-method/push",
  url}, events_requested: [...]}` registers the receiver (HTTPS, on one of the project's
  authorized domains; 200 on success);
- `GET /v1beta/stream` reads the configuration;
- `POST /v1beta/stream/status:update` `{status: enabled|disabled}` stops and resumes the
  stream (`GET /v1beta/stream/status` reads it); a disabled stream's events are lost;
- `POST /v1beta/stream:verify` `{state}` sends a verification event to the receiver.

The service account file is Google's JSON key (`client_email`, `private_key_id`,
`private_key`); its key is never logged or shown.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from pydantic import SecretStr

from token_broker.google.transport import Upstream

MANAGEMENT_AUDIENCE = (
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
)
PUSH_DELIVERY = "https://schemas.openid.net/secevent/risc/delivery-method/push"
BEARER_LIFETIME = 3600


class ServiceAccountFileError(Exception):
    """The service account file cannot be used (the message names the problem, not the key)."""


class RiscApiError(Exception):
    """The RISC API refused a call: its HTTP status and Google's message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key_id: str
    private_key: SecretStr = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> ServiceAccount:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ServiceAccountFileError(f"no file at {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ServiceAccountFileError(
                f"{path} is not a readable JSON file ({type(error).__name__})"
            ) from None
        if not isinstance(document, dict) or document.get("type") != "service_account":
            raise ServiceAccountFileError(
                f"{path} is not a service account key (its type is not service_account)"
            )
        values = {name: document.get(name) for name in ("client_email", "private_key_id")}
        key = document.get("private_key")
        missing = [
            name for name, value in values.items() if not isinstance(value, str) or not value
        ]
        if not isinstance(key, str) or not key:
            missing.append("private_key")
        if missing or not isinstance(key, str):
            raise ServiceAccountFileError(f"{path} lacks {', '.join(missing)}")
        return cls(str(values["client_email"]), str(values["private_key_id"]), SecretStr(key))

    def bearer(self, *, now: int | None = None) -> str:
        """The RISC API's authorization token, valid for one hour."""
        issued = int(time.time()) if now is None else now
        try:
            key = RSAKey.import_key(self.private_key.get_secret_value())
        except (JoseError, ValueError, TypeError):
            raise ServiceAccountFileError(
                "the service account's private key is unreadable"
            ) from None
        claims = {
            "iss": self.client_email,
            "sub": self.client_email,
            "aud": MANAGEMENT_AUDIENCE,
            "iat": issued,
            "exp": issued + BEARER_LIFETIME,
        }
        return jwt.encode({"alg": "RS256", "kid": self.private_key_id}, claims, key)


class RiscStreamApi:
    """The stream configuration calls, on the shared upstream client."""

    def __init__(self, upstream: Upstream, api_base: str, account: ServiceAccount) -> None:
        self.upstream = upstream
        self.api_base = api_base.rstrip("/")
        self.account = account

    async def update(self, receiver_url: str, events: list[str]) -> dict[str, Any]:
        body = {
            "delivery": {"delivery_method": PUSH_DELIVERY, "url": receiver_url},
            "events_requested": events,
        }
        return await self._call("POST", "/v1beta/stream:update", body)

    async def configuration(self) -> dict[str, Any]:
        return await self._call("GET", "/v1beta/stream")

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/v1beta/stream/status")

    async def set_status(self, *, enabled: bool) -> dict[str, Any]:
        body = {"status": "enabled" if enabled else "disabled"}
        return await self._call("POST", "/v1beta/stream/status:update", body)

    async def verify(self, state: str) -> dict[str, Any]:
        return await self._call("POST", "/v1beta/stream:verify", {"state": state})

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = await self.upstream.send(
            "risc_api",
            method,
            self.api_base + path,
            json=body,
            headers={"Authorization": f"Bearer {self.account.bearer()}"},
        )
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        if response.status_code != 200:
            raise RiscApiError(response.status_code, _message(answer))
        return answer if isinstance(answer, dict) else {}


def _message(answer: Any) -> str:
    """Google's error message ({"error": {"code", "message", "status"}}), or nothing."""
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return "(no message)"
