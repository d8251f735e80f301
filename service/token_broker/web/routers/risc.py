"""Google's Cross-Account Protection posts security event tokens here (no API key: the
token's signature is the authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from token_broker.errors import (
    DatabaseUnavailable,
    InvalidSecurityEvent,
    UpstreamError,
    UpstreamUnavailable,
)
from token_broker.web.dependencies import State
from token_broker.web.problems import problem_responses

router = APIRouter(tags=["cross-account protection"])
SECEVENT_JWT = "application/secevent+jwt"


@router.post(
    "/v1/risc",
    status_code=202,
    response_class=Response,
    summary="Receive a security event token from Google (Cross-Account Protection)",
    description=(
        "The body is one security event token (RFC 8417), as Google posts it "
        f"(`Content-Type: {SECEVENT_JWT}`). It is validated as Google's guide requires: "
        "signed by a key of the key set named by the RISC configuration document, `iss` the "
        "configuration's issuer, `aud` one of the broker's client ids; and `iat` no older "
        "than TOKEN_BROKER_RISC_MAX_AGE_SECONDS, its `jti` never seen before. Accepted: 202, "
        'after the event was acted on (README, "Cross-Account Protection"). Refused: 400 '
        "`invalid_security_event` with RFC 8935's `err` and `description`; nothing changes."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {SECEVENT_JWT: {"schema": {"type": "string", "maxLength": 16384}}},
        }
    },
    responses={
        202: {"description": "Accepted and acted on."},
        **problem_responses(
            InvalidSecurityEvent, UpstreamError, UpstreamUnavailable, DatabaseUnavailable
        ),
    },
)
async def receive_security_event(request: Request, state: State) -> Response:
    await state.risc.receive(await request.body())
    return Response(status_code=202)
