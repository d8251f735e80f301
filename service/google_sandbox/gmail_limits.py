"""Gmail's per-user limits in front of the Gmail routes, and their control endpoint.

The model and its sources are in `quota.py`. This middleware sits outside the
fault injector, so a call's added latency counts as time in progress. A plain
call takes one place among the user's calls in progress (429 "Too many concurrent
requests for user" when none is free) and then its method's units (429, or 403
`userRateLimitExceeded`, when the bucket holds too few). A batch takes one place
per part for as long as it runs; the parts that do not fit are answered 429 inside
the batch, and each dispatched part is charged its own units.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from google_sandbox.batch import PARSED_PARTS, REFUSED_PARTS, MalformedBatch, parse_batch
from google_sandbox.faults import BATCH_PART, endpoint_of
from google_sandbox.gmail_access import bearer_user
from google_sandbox.quota import UNIT_COSTS, QuotaSettings, concurrency_body, rate_limited_body
from google_sandbox.state import SandboxState


class GmailLimits:
    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        quota = self.state.quota
        if scope["type"] != "http" or not quota.enforced:
            await self.app(scope, receive, send)
            return
        root, path = scope.get("root_path", ""), scope["path"]
        path = path[len(root) :] if root and path.startswith(root) else path
        endpoint = endpoint_of(path)
        if endpoint != "gmail.batch" and endpoint not in UNIT_COSTS:
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        user = bearer_user(self.state, headers.get(b"authorization", b"").decode("latin-1"))
        if user is None and endpoint != "gmail.batch":
            await self.app(scope, receive, send)  # Gmail's own 401 answers it
            return
        if endpoint == "gmail.batch":
            await self._batch(scope, receive, send, user.email if user else None, headers)
            return
        assert user is not None
        if scope.get(BATCH_PART):
            # The batch already holds this call's place among the calls in progress.
            await self._charged(endpoint, user.email, scope, receive, send)
            return
        if quota.enter(user.email, 1) == 0:
            await self._refuse(endpoint, 429, concurrency_body(), send)
            return
        try:
            await self._charged(endpoint, user.email, scope, receive, send)
        finally:
            quota.leave(user.email, 1)

    async def _charged(
        self, endpoint: str, user: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not self.state.quota.charge(user, UNIT_COSTS[endpoint]):
            status = self.state.quota.settings.exceeded_status
            await self._refuse(endpoint, status, rate_limited_body(status), send)
            return
        await self.app(scope, receive, send)

    async def _batch(
        self, scope: Scope, receive: Receive, send: Send, user: str | None,
        headers: dict[bytes, bytes],
    ) -> None:  # fmt: skip
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            calls = parse_batch(headers.get(b"content-type", b"").decode("latin-1"), body)
        except MalformedBatch:
            await self.app(scope, replay, send)  # the route answers 400
            return
        if user is None:
            # Parts may carry their own credentials; each is checked when dispatched.
            await self.app({**scope, PARSED_PARTS: calls}, replay, send)
            return
        admitted = self.state.quota.enter(user, len(calls))
        try:
            await self.app(
                {**scope, PARSED_PARTS: calls, REFUSED_PARTS: len(calls) - admitted}, replay, send
            )
        finally:
            self.state.quota.leave(user, admitted)

    async def _refuse(self, endpoint: str, status: int, body: dict[str, Any], send: Send) -> None:
        content = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json; charset=UTF-8"),
            (b"content-length", str(len(content)).encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": content})
        self.state.record(endpoint, status)


class QuotaSpec(BaseModel):
    units_per_minute: int | None = Field(
        default=None, ge=1, description="Units each user may spend a minute; null: not enforced."
    )
    burst_units: int | None = Field(
        default=None,
        ge=1,
        description="Most units a bucket holds; null: a tenth of a minute's.",
    )
    concurrent_limit: int | None = Field(
        default=None, ge=1, description="Calls in progress per user (a batch counts its parts)."
    )
    exceeded_status: Literal[429, 403] = Field(
        default=429, description="429 rateLimitExceeded, or the older 403 userRateLimitExceeded."
    )


def quota_router(state: SandboxState) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    @router.get("/quota", summary="Gmail quota settings, units spent, rate-limit answers")
    async def report() -> dict[str, Any]:
        return state.quota.report()

    @router.put("/quota", summary="Enforce Gmail's per-user quota and concurrency limit")
    async def configure(spec: QuotaSpec) -> dict[str, Any]:
        state.quota.configure(QuotaSettings(**spec.model_dump()))
        return state.quota.report()

    return router
