"""Control of the sandbox's Pub/Sub (`pubsub.py`): where pushes go, delay, drops, and
deliveries made to order (a replay, a duplicate, an expired, forged or misaddressed token).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from google_sandbox.keys import SigningKey
from google_sandbox.pubsub import TOKEN_LIFETIME, Notification, push_body
from google_sandbox.state import SandboxState
from google_sandbox.sync import current_history


class PubSubSpec(BaseModel):
    push_endpoint: str | None = Field(
        default=None, description="Where pushes go (the broker's /v1/gmail/push); null: nowhere."
    )
    audience: str | None = Field(
        default=None, description="The tokens' aud; null: the push endpoint URL."
    )
    service_account_email: str | None = Field(default=None, description="The tokens' email.")
    topics: list[str] | None = Field(
        default=None, description="Topics Gmail may publish to (users.watch refuses others)."
    )
    delay_seconds: float | None = Field(default=None, ge=0, le=3600)
    drop_rate: float | None = Field(default=None, ge=0, le=1)
    token_reuse_seconds: float | None = Field(default=None, ge=0, le=3600)
    max_attempts: int | None = Field(default=None, ge=1, le=50)


class DeliverySpec(BaseModel):
    email: str
    history_id: int | None = Field(default=None, description="Default: the mailbox's current.")
    audience: str | None = Field(default=None, description="Default: the configured one.")
    service_account_email: str | None = None
    issued_seconds_ago: float = Field(default=0, ge=0)
    lifetime_seconds: int = Field(default=TOKEN_LIFETIME, ge=1)
    issuer: str | None = None
    signed_by: Literal["sandbox", "stranger"] = Field(
        default="sandbox", description="stranger: a key the sandbox never published (forged)."
    )
    with_token: bool = True


def pubsub_control_router(state: SandboxState) -> APIRouter:
    router = APIRouter(prefix="/_sandbox/pubsub", tags=["sandbox control"])
    pubsub = state.pubsub

    def find(message_id: str) -> Notification:
        for notification in pubsub.log:
            if notification.message_id == message_id:
                return notification
        raise HTTPException(404, f"no notification {message_id}")

    @router.get("", summary="Push configuration, watches and counters")
    async def report() -> dict[str, Any]:
        return pubsub.report()

    @router.put("", summary="Configure the push subscription, delay and drop rate")
    async def configure(spec: PubSubSpec) -> dict[str, Any]:
        for name, value in spec.model_dump(exclude_unset=True).items():
            if name == "topics":
                pubsub.config.topics = set(value or ())
            elif value is not None or name in ("push_endpoint", "audience"):
                setattr(pubsub.config, name, value)
        return pubsub.report()

    @router.get("/notifications", summary="Notifications published, and what became of them")
    async def notifications(email: str | None = None, outcome: str | None = None) -> list[Any]:
        return [
            n.report()
            for n in pubsub.log
            if (email is None or n.email == email.lower())
            and (outcome is None or n.outcome == outcome)
        ]

    @router.post(
        "/notifications/{message_id}/redeliver",
        summary="Push a notification again: with its own token (a replay) or a fresh one",
    )
    async def redeliver(message_id: str, fresh_token: bool = False) -> dict[str, Any]:
        status = await pubsub.redeliver(find(message_id), fresh_token=fresh_token)
        return {"message_id": message_id, "status": status}

    @router.post("/deliveries", summary="Push one notification now, with the token described")
    async def deliver(spec: DeliverySpec) -> dict[str, Any]:
        if not pubsub.config.push_endpoint:
            raise HTTPException(409, "no push endpoint configured (PUT /_sandbox/pubsub)")
        user = state.users.get(spec.email.lower())
        history_id = spec.history_id
        if history_id is None:
            if user is None:
                raise HTTPException(404, f"no sandbox user {spec.email}")
            history_id = current_history(state, user)
        now = time.time()
        notification = Notification(pubsub.next_message_id(), spec.email, history_id, now)
        body = push_body(notification.message_id, spec.email, history_id, now)
        authorization = ""
        if spec.with_token:
            token = pubsub.mint_token(
                spec.audience or pubsub.config.effective_audience,
                email=spec.service_account_email,
                issued_at=now - spec.issued_seconds_ago,
                lifetime=spec.lifetime_seconds,
                issuer=spec.issuer,
                key=SigningKey.generate() if spec.signed_by == "stranger" else None,
            )
            authorization = "Bearer " + token
        notification.body, notification.authorization = body, authorization
        pubsub.log.append(notification)
        status = await pubsub.post(body, authorization)
        notification.last_status, notification.attempts = status, 1
        notification.outcome = "delivered" if 200 <= status < 300 else "failed"
        return {"message_id": notification.message_id, "status": status}

    return router
