"""Cross-Account Protection (RISC), as Google plays it: the configuration document, the stream
API a project registers its receiver with, and signed security event tokens delivered to it.

Facts (Google's guide, developers.google.com/identity/protocols/risc):

- The RISC configuration document (`/.well-known/risc-configuration`) names the issuer of
  security event tokens and the `jwks_uri` of their signing keys. Google's example token
  says `"iss": "https://accounts.google.com/"`, with the slash its ID tokens lack, and its
  guide's Java sample takes the keys from https://www.googleapis.com/oauth2/v3/certs: here
  the issuer is the sandbox's own plus "/", and the keys are the ID tokens' (`/oauth2/v3/certs`).
- A token is an RS256 JWT (header `kid`) with `iss`, `aud` (the client id), `iat`, `jti`
  (unique to the stream) and `events`: event type URI -> `{subject: {subject_type:
  "iss-sub", iss, sub}, ...}`; account-disabled adds `reason` (hijacking, bulk-account),
  verification `state`; token-revoked names the refresh token (`subject_type`
  `oauth_token`, `token_type` refresh_token, `token_identifier_alg`
  `hash_base64_sha512_sha512`, `token` the base64 SHA-512 of its SHA-512). No `exp`.
- The stream API takes a bearer JWT signed by a service account of the project (RS256,
  `kid` its key id; `iss` = `sub` = its email; `aud`
  https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService; `exp` one
  hour after `iat`): `POST /v1beta/stream:update` (`delivery.delivery_method` push,
  `delivery.url` HTTPS, `events_requested`), `GET /v1beta/stream`, `GET
  /v1beta/stream/status`, `POST /v1beta/stream/status:update` (`enabled`|`disabled`: a
  disabled stream's events are not sent, nor kept), `POST /v1beta/stream:verify` (`state`:
  a verification event). Errors as its reference lists them: 400 "Stream configuration must
  contain $fieldname field.", 401 "Unauthorized.", 403 "The delivery endpoint must be an
  HTTPS URL." (here loopback http is accepted: tests and dev mode have no TLS), 403
  "Unsupported status. Invalid status.", 404 "Project has no RISC configuration."
- Google "will attempt to redeliver events that it believes have not been delivered"
  with "limited retries": here three attempts, a non-2xx answer counting as not delivered.

Revoking a user's grants (control API) sends tokens-revoked to each client's project;
disabling or enabling a user sends account-disabled or account-enabled; any event can be
signed and sent (or only signed, for a test to tamper with) through `/_sandbox/risc/events`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from pydantic import BaseModel, Field

from google_sandbox.records import SandboxUser, ServiceAccount
from google_sandbox.state import SandboxState

MANAGEMENT_AUDIENCE = (
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
)
PUSH_DELIVERY = "https://schemas.openid.net/secevent/risc/delivery-method/push"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
EVENT_TYPES = {
    "sessions-revoked": RISC + "sessions-revoked",
    "tokens-revoked": OAUTH + "tokens-revoked",
    "token-revoked": OAUTH + "token-revoked",
    "account-disabled": RISC + "account-disabled",
    "account-enabled": RISC + "account-enabled",
    "account-credential-change-required": RISC + "account-credential-change-required",
    "verification": RISC + "verification",
}
SUPPORTED = frozenset(EVENT_TYPES.values())
DELIVERY_ATTEMPTS = 3
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def configuration(root: str) -> dict[str, Any]:
    """The RISC configuration document of a sandbox served at `root`."""
    return {
        "issuer": root + "/",
        "jwks_uri": root + "/oauth2/v3/certs",
        "delivery_methods_supported": [PUSH_DELIVERY],
        "add_subject_endpoint": root + "/v1beta/subjects:add",
        "remove_subject_endpoint": root + "/v1beta/subjects:remove",
    }


def token_identifier(refresh_token: str) -> str:
    """Google's `hash_base64_sha512_sha512` identifier of a refresh token."""
    inner = hashlib.sha512(refresh_token.encode()).digest()
    return base64.b64encode(hashlib.sha512(inner).digest()).decode()


def security_event_token(
    state: SandboxState,
    *,
    issuer: str,
    event: str,
    audience: str,
    subject: dict[str, Any],
    extra: dict[str, Any] | None = None,
    issued_at: int | None = None,
    jti: str | None = None,
) -> str:
    """A security event token as Google signs one (event: a short name or a type URI)."""
    claims = {
        "iss": issuer,
        "aud": audience,
        "iat": int(time.time()) if issued_at is None else issued_at,
        "jti": jti or secrets.token_hex(16),
        "events": {EVENT_TYPES.get(event, event): {"subject": subject, **(extra or {})}},
    }
    key = state.signing_keys.current
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key.jwk)


def user_subject(issuer: str, user: SandboxUser) -> dict[str, Any]:
    return {"subject_type": "iss-sub", "iss": issuer, "sub": user.sub}


class Deliveries:
    """Sends tokens to the registered receiver in the background, with Google's few retries."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, token: str, jti: str, event_uri: str) -> bool:
        """Queue a token for the receiver; False when the stream would not carry it."""
        stream = self.state.risc
        if stream.receiver_url is None or not stream.enabled:
            return False
        if event_uri not in stream.events_requested:
            return False
        task = asyncio.get_running_loop().create_task(
            self._deliver(stream.receiver_url, token, jti, event_uri)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _deliver(self, url: str, token: str, jti: str, event_uri: str) -> None:
        outcome = "not sent"
        async with httpx.AsyncClient(timeout=10) as http:
            for attempt in range(DELIVERY_ATTEMPTS):
                try:
                    response = await http.post(
                        url,
                        content=token,
                        headers={
                            "Content-Type": "application/secevent+jwt",
                            "Accept": "application/json",
                        },
                    )
                    outcome = str(response.status_code)
                    if 200 <= response.status_code < 300 or response.status_code == 400:
                        break  # delivered, or refused for good (RFC 8935: not retried)
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                await asyncio.sleep(0.2 * 2**attempt)
        self.state.risc.deliveries.append((jti, event_uri, outcome))


def install(state: SandboxState) -> Deliveries:
    """Deliver the state's security events (revocations, disabled accounts) as Google would."""
    deliveries = Deliveries(state)

    def on_event(event: str, email: str, client_id: str, extra: dict[str, str]) -> None:
        user = state.users.get(email)
        if state.issuer is None or user is None:
            return  # no known address for this sandbox: nothing can be signed for it
        issuer = state.issuer + "/"
        jti = secrets.token_hex(16)
        token = security_event_token(
            state, issuer=issuer, event=event, audience=client_id,
            subject=user_subject(issuer, user), extra=extra, jti=jti,
        )  # fmt: skip
        deliveries.send(token, jti, EVENT_TYPES[event])

    state.on_security_event = on_event
    return deliveries


# ---------------------------------------------------------------------- the HTTP side


def _api_error(status: int, message: str) -> JSONResponse:
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "NOT_FOUND"}  # fmt: skip
    return JSONResponse(
        {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}},
        status_code=status,
    )


def _authorized(state: SandboxState, request: Request) -> bool:
    """Whether the bearer JWT is one a service account of the project signed for the API."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return False
    token = header[7:].strip()
    try:
        kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")).get("kid")
        account = state.risc.service_accounts.get(str(kid))
        if account is None:
            return False
        claims = jwt.decode(token, RSAKey.import_key(account.public_jwk), ["RS256"]).claims
    except (JoseError, ValueError, TypeError, AttributeError, IndexError):
        return False
    now = time.time()
    return (
        claims.get("iss") == account.client_email == claims.get("sub")
        and claims.get("aud") == MANAGEMENT_AUDIENCE
        and isinstance(claims.get("exp"), int)
        and isinstance(claims.get("iat"), int)
        and claims["iat"] <= now + 60 < claims["exp"] + 60
        and claims["exp"] - claims["iat"] <= 3600
    )


class EventSpec(BaseModel):
    type: str = Field(
        description="tokens-revoked, token-revoked, sessions-revoked, account-disabled, "
        "account-enabled, account-credential-change-required, verification, or any event "
        "type URI."
    )
    email: str | None = Field(default=None, description="The user it is about.")
    client_id: str | None = Field(default=None, description="aud (default: the user's client).")
    reason: str | None = Field(default=None, description="account-disabled's reason.")
    state: str | None = Field(default=None, description="verification's state.")
    issued_at: int | None = Field(default=None, description="iat (default: now).")
    jti: str | None = None
    issuer: str | None = Field(default=None, description="iss (default: the sandbox's).")
    deliver: bool = Field(default=True, description="false: only sign it and answer it.")


class DisableSpec(BaseModel):
    reason: str | None = Field(default=None, description="hijacking or bulk-account")


def risc_router(state: SandboxState, deliveries: Deliveries) -> APIRouter:
    router = APIRouter(tags=["cross-account protection"])

    def root(request: Request) -> str:
        scope_root = request.scope.get("root_path", "")
        return str(request.url.replace(path=scope_root, query="", fragment="")).rstrip("/")

    def issuer(request: Request) -> str:
        return (state.issuer or root(request)) + "/"

    @router.get("/.well-known/risc-configuration", summary="RISC configuration document")
    async def risc_configuration(request: Request) -> JSONResponse:
        document = configuration(state.issuer or root(request))
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    # ------------------------------------------------------------------ stream API

    def stream_view() -> dict[str, Any]:
        stream = state.risc
        return {
            "delivery": {"delivery_method": PUSH_DELIVERY, "url": stream.receiver_url},
            "events_requested": stream.events_requested,
            "events_delivered": [e for e in stream.events_requested if e in SUPPORTED],
        }

    @router.post("/v1beta/stream:update", summary="RISC API: configure the event stream")
    async def update_stream(request: Request) -> JSONResponse:
        if not _authorized(state, request):
            return _api_error(401, "Unauthorized.")
        try:
            body = await request.json()
        except ValueError:
            return _api_error(400, "Stream configuration must contain delivery field.")
        delivery = body.get("delivery") if isinstance(body, dict) else None
        if not isinstance(delivery, dict):
            return _api_error(400, "Stream configuration must contain delivery field.")
        url = delivery.get("url")
        if delivery.get("delivery_method") != PUSH_DELIVERY or not isinstance(url, str):
            return _api_error(400, "Stream configuration must contain delivery.url field.")
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
            return _api_error(403, "The delivery endpoint must be an HTTPS URL.")
        events = body.get("events_requested")
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            return _api_error(400, "Stream configuration must contain events_requested field.")
        state.risc.receiver_url = url
        state.risc.events_requested = list(events)
        return JSONResponse(stream_view())

    @router.get("/v1beta/stream", summary="RISC API: the event stream's configuration")
    async def read_stream(request: Request) -> JSONResponse:
        if not _authorized(state, request):
            return _api_error(401, "Unauthorized.")
        if state.risc.receiver_url is None:
            return _api_error(404, "Project has no RISC configuration.")
        return JSONResponse(stream_view())

    @router.get("/v1beta/stream/status", summary="RISC API: whether the stream is enabled")
    async def read_status(request: Request) -> JSONResponse:
        if not _authorized(state, request):
            return _api_error(401, "Unauthorized.")
        if state.risc.receiver_url is None:
            return _api_error(404, "Project has no RISC configuration.")
        return JSONResponse({"status": "enabled" if state.risc.enabled else "disabled"})

    @router.post("/v1beta/stream/status:update", summary="RISC API: enable or disable the stream")
    async def update_status(request: Request) -> JSONResponse:
        if not _authorized(state, request):
            return _api_error(401, "Unauthorized.")
        if state.risc.receiver_url is None:
            return _api_error(
                404, "Project has no existing RISC configuration, cannot update status."
            )
        try:
            status = (await request.json()).get("status")
        except (ValueError, AttributeError):
            status = None
        if status not in ("enabled", "disabled"):
            return _api_error(403, "Unsupported status. Invalid status.")
        state.risc.enabled = status == "enabled"
        return JSONResponse({"status": status})

    @router.post("/v1beta/stream:verify", summary="RISC API: send a verification event")
    async def verify_stream(request: Request) -> JSONResponse:
        if not _authorized(state, request):
            return _api_error(401, "Unauthorized.")
        if state.risc.receiver_url is None:
            return _api_error(404, "Project has no RISC configuration.")
        try:
            verification_state = (await request.json()).get("state")
        except (ValueError, AttributeError):
            verification_state = None
        audience = next(iter(state.clients), "")
        jti = secrets.token_hex(16)
        token = security_event_token(
            state, issuer=issuer(request), event="verification", audience=audience,
            subject={}, extra={"state": str(verification_state or "")}, jti=jti,
        )  # fmt: skip
        deliveries.send(token, jti, EVENT_TYPES["verification"])
        return JSONResponse({})

    # ------------------------------------------------------------------ control

    @router.post(
        "/_sandbox/risc/service-accounts",
        status_code=201,
        tags=["sandbox control"],
        summary="A service account key file for the RISC API (Google's JSON key format)",
    )
    async def create_service_account() -> dict[str, Any]:
        return new_service_account(state)

    @router.post(
        "/_sandbox/risc/events",
        tags=["sandbox control"],
        summary="Sign a security event token and deliver it to the registered receiver",
    )
    async def send_event(spec: EventSpec, request: Request) -> dict[str, Any]:
        uri = EVENT_TYPES.get(spec.type, spec.type)
        user = state.users.get(spec.email.lower()) if spec.email else None
        if spec.email and user is None:
            raise HTTPException(status_code=404, detail="no such user")
        sender = spec.issuer or issuer(request)
        subject: dict[str, Any] = user_subject(sender, user) if user else {}
        audience = spec.client_id or _client_of(state, user)
        extra: dict[str, Any] = {}
        if spec.reason is not None:
            extra["reason"] = spec.reason
        if spec.state is not None:
            extra["state"] = spec.state
        if uri == EVENT_TYPES["token-revoked"] and user is not None:
            token = _latest_refresh_token(state, user, audience)
            subject = {
                "subject_type": "oauth_token", "token_type": "refresh_token",
                "token_identifier_alg": "hash_base64_sha512_sha512",
                "token": token_identifier(token) if token else "",
            }  # fmt: skip
        jti = spec.jti or secrets.token_hex(16)
        token = security_event_token(
            state, issuer=sender, event=uri, audience=audience, subject=subject,
            extra=extra, issued_at=spec.issued_at, jti=jti,
        )  # fmt: skip
        queued = deliveries.send(token, jti, uri) if spec.deliver else False
        return {"jti": jti, "token": token, "queued": queued}

    @router.get(
        "/_sandbox/risc/deliveries",
        tags=["sandbox control"],
        summary="Tokens sent to the receiver: jti, event type, the receiver's HTTP status",
    )
    async def read_deliveries() -> list[dict[str, str]]:
        return [
            {"jti": jti, "event": event, "status": status}
            for jti, event, status in state.risc.deliveries
        ]

    @router.post(
        "/_sandbox/users/{email}/disable",
        tags=["sandbox control"],
        summary="Disable a Google account: refreshes refused, account-disabled delivered",
    )
    async def disable(email: str, spec: DisableSpec) -> dict[str, int]:
        if email.lower() not in state.users:
            raise HTTPException(status_code=404, detail="no such user")
        return {"told": state.set_disabled(email, True, reason=spec.reason)}

    @router.post(
        "/_sandbox/users/{email}/enable",
        tags=["sandbox control"],
        summary="Enable a Google account again: account-enabled delivered",
    )
    async def enable(email: str) -> dict[str, int]:
        if email.lower() not in state.users:
            raise HTTPException(status_code=404, detail="no such user")
        return {"told": state.set_disabled(email, False)}

    return router


def new_service_account(state: SandboxState) -> dict[str, Any]:
    """A service account of the sandbox's project, as Google's JSON key file."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = secrets.token_hex(20)
    email = f"risc-{secrets.token_hex(3)}@sandbox-project.iam.gserviceaccount.com"
    public = RSAKey.import_key(private.public_key()).as_dict(private=False)
    state.risc.service_accounts[key_id] = ServiceAccount(email, key_id, dict(public))
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "sandbox-project",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": str(int.from_bytes(secrets.token_bytes(8), "big")),
        "token_uri": (state.issuer or "http://127.0.0.1") + "/token",
    }


def register_receiver(state: SandboxState, url: str) -> None:
    """What `stream:update` does: deliver every documented event type to `url` (dev mode)."""
    state.risc.receiver_url = url
    state.risc.events_requested = list(EVENT_TYPES.values())
    state.risc.enabled = True


def _client_of(state: SandboxState, user: SandboxUser | None) -> str:
    if user is not None:
        for grant in state.grants.values():
            if grant.email == user.email:
                return grant.client_id
    return next(iter(state.clients), "")


def _latest_refresh_token(state: SandboxState, user: SandboxUser, client_id: str) -> str | None:
    """The refresh token the client got last for the user (the one a broker keeps)."""
    for grant in state.grants.values():
        if grant.email == user.email and grant.client_id == client_id and not grant.revoked:
            return grant.latest_refresh_token
    return None
