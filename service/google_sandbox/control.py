"""The sandbox's own control API under `/_sandbox`: faults, counters, settings, users."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from google_sandbox.records import FaultKind, FaultRule
from google_sandbox.state import SandboxState


class FaultSpec(BaseModel):
    endpoint: str = Field(
        description="An endpoint name (token, revoke, userinfo, jwks, authorize, "
        "gmail.messages.list, gmail.messages.get, gmail.batch, gmail.history.list, "
        'gmail.getProfile, gmail.watch, gmail.stop) or "*". Faults on '
        "gmail.messages.get also hit the calls inside a batch (all but latency).",
    )
    kind: FaultKind = "status"
    status: int = Field(default=503, ge=200, le=599)
    reason: str | None = Field(
        default=None, description="Gmail error reason, or the raw body for kind=raw."
    )
    retry_after: int | None = Field(default=None, ge=0)
    delay: float = Field(default=0.0, ge=0)
    after: int = Field(default=0, ge=0)
    times: int | None = Field(default=None, ge=1)
    content_type: str = "text/html"


class SandboxSettings(BaseModel):
    access_token_lifetime: int | None = Field(default=None, ge=1)
    rotate_refresh_tokens: bool | None = None
    code_ttl: int | None = Field(default=None, ge=1)
    history_retention_seconds: float | None = Field(
        default=None, gt=0, description="How long Gmail keeps history records (a week)."
    )


class SeedSpec(BaseModel):
    client_id: str
    emails: list[str] = Field(max_length=100_000)
    scopes: str = Field(
        default="openid email profile https://www.googleapis.com/auth/gmail.readonly",
        description="Space-separated scopes each grant carries.",
    )


class UserSpec(BaseModel):
    email: str = Field(description="How the account signs in at the consent page.")
    name: str | None = None
    mailbox_size: int | None = Field(default=None, ge=0, le=1_000_000)
    email_claim: str | None = Field(
        default=None,
        description="The address its ID token and userinfo report (default: `email`); "
        "another account's address, in any letter case, to play a shadowing attempt.",
    )
    email_verified: bool | None = Field(
        default=None, description="What `email_verified` says (default true)."
    )
    reauth_required: bool | None = Field(
        default=None,
        description="A session-control policy: refreshes answer invalid_grant, invalid_rapt.",
    )
    admin_restricted: bool | None = Field(
        default=None, description="An admin restriction: refreshes answer admin_policy_enforced."
    )


class ClientSpec(BaseModel):
    extra_audiences: list[str] | None = Field(
        default=None, description="More `aud` values in this client's ID tokens."
    )
    azp: str | None = Field(
        default=None, description="`azp` of its ID tokens (default: the client id)."
    )
    publishing_status: Literal["testing", "production"] | None = Field(
        default=None,
        description="testing: grants beyond the sign-in scopes end 7 days after consent.",
    )
    time_based_access_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Grants end this long after consent (refresh_token_expires_in); 0: off.",
    )


class AgeSpec(BaseModel):
    seconds: float = Field(gt=0, description="How much time passes for the user's grants.")


def control_router(state: SandboxState) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    @router.get("/counters", summary="Calls per endpoint (and per grant type)")
    async def counters() -> dict[str, dict[str, int]]:
        return {"calls": dict(state.calls)}

    @router.delete("/counters", status_code=204)
    async def reset_counters() -> None:
        state.calls.clear()
        state.call_log.clear()

    @router.get("/calls", summary="Call log: endpoint, monotonic time, status")
    async def calls(endpoint: str | None = None) -> list[dict[str, Any]]:
        return [
            {"endpoint": c.endpoint, "at": c.at, "status": c.status}
            for c in state.call_log
            if endpoint is None or c.endpoint == endpoint
        ]

    @router.post("/faults", status_code=201, summary="Switch a fault on")
    async def add_fault(spec: FaultSpec) -> dict[str, int]:
        state.faults.append(FaultRule(**spec.model_dump()))
        return {"faults": len(state.faults)}

    @router.delete("/faults", status_code=204, summary="Switch every fault off")
    async def clear_faults() -> None:
        state.faults.clear()

    @router.put("/settings", summary="Token lifetime, refresh-token rotation, code lifetime")
    async def change_settings(spec: SandboxSettings) -> dict[str, Any]:
        for name, value in spec.model_dump(exclude_none=True).items():
            setattr(state, name, value)
        return {
            "access_token_lifetime": state.access_token_lifetime,
            "rotate_refresh_tokens": state.rotate_refresh_tokens,
            "code_ttl": state.code_ttl,
            "history_retention_seconds": state.history_retention_seconds,
        }

    @router.post(
        "/keys/rotate",
        summary="Rotate the ID-token signing keys: a new one signs, the previous stays published",
    )
    async def rotate_keys() -> dict[str, Any]:
        state.signing_keys.rotate()
        return {
            "signing_kid": state.signing_keys.current.kid,
            "published_kids": [key.kid for key in state.signing_keys.published],
        }

    @router.post(
        "/users", status_code=201, summary="Create a user, or change their mailbox or email claim"
    )
    async def add_user(spec: UserSpec) -> dict[str, Any]:
        user = state.add_user(
            spec.email,
            name=spec.name,
            mailbox_size=spec.mailbox_size,
            email_claim=spec.email_claim,
            email_verified=spec.email_verified,
        )
        if spec.reauth_required is not None:
            user.reauth_required = spec.reauth_required
        if spec.admin_restricted is not None:
            user.admin_restricted = spec.admin_restricted
        return {
            "email": user.email,
            "sub": user.sub,
            "mailbox_size": user.mailbox_size,
            "email_claim": user.claimed_email,
            "email_verified": user.email_verified,
            "reauth_required": user.reauth_required,
            "admin_restricted": user.admin_restricted,
        }

    @router.put(
        "/clients/{client_id}",
        summary="A client: ID tokens' extra audiences and azp, publishing status, time-based "
        "access",
    )
    async def change_client(client_id: str, spec: ClientSpec) -> dict[str, Any]:
        client = state.clients.get(client_id)
        if client is None:
            raise HTTPException(status_code=404, detail="no such client")
        if spec.extra_audiences is not None:
            client.extra_audiences = spec.extra_audiences
        if "azp" in spec.model_fields_set:
            client.azp = spec.azp
        if spec.publishing_status is not None:
            client.publishing_status = spec.publishing_status
        if spec.time_based_access_seconds is not None:
            client.time_based_access_seconds = spec.time_based_access_seconds or None
        return {
            "extra_audiences": client.extra_audiences,
            "azp": client.azp or client_id,
            "publishing_status": client.publishing_status,
            "time_based_access_seconds": client.time_based_access_seconds,
        }

    @router.post(
        "/seed",
        summary="Users with a live grant each, at once (benchmarks seed many accounts)",
        description="Answers each user's subject and a new refresh and access token.",
    )
    async def seed(spec: SeedSpec) -> list[dict[str, Any]]:
        seeded = state.seed(spec.emails, spec.client_id, set(spec.scopes.split()))
        return [
            {"email": user.email, "sub": user.sub, "refresh_token": refresh_token,
             "access_token": access_token, "expires_in": lifetime}
            for user, refresh_token, access_token, lifetime in seeded
        ]  # fmt: skip

    @router.post("/users/{email}/revoke", summary="Revoke every grant of a user")
    async def revoke_user(email: str) -> dict[str, int]:
        return {"revoked": state.revoke_user(email)}

    @router.post(
        "/users/{email}/age-grants",
        summary="Let time pass for a user's grants (consent, last use, end move back)",
    )
    async def age_grants(email: str, spec: AgeSpec) -> dict[str, int]:
        return {"aged": state.age_grants(email, spec.seconds)}

    @router.post("/users/{email}/expire-tokens", summary="Expire a user's access tokens now")
    async def expire(email: str) -> dict[str, int]:
        return {"expired": state.expire_access_tokens(email)}

    @router.post("/reset", status_code=204, summary="Forget users, grants, faults and counters")
    async def reset() -> None:
        state.reset()

    return router
