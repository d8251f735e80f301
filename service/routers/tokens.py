"""Fresh access tokens for internal services: the FastAPI route, and its fast path.

Internal services ask for a token before every Gmail call, so a cache hit must cost
little more than HTTP itself. Profiling showed FastAPI's dependency solving and
parameter validation costing about twice the rest of the request, so the endpoint
is answered by `TokenFastPath`, a few lines of ASGI in front of the router that call
the same service, render the same body and the same problems. Anything it is not
sure about goes to the FastAPI route, which owns validation and the documentation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Permission
from service.deps import BrokerState, State, TokensReader
from service.errors import (
    AccountNotFound,
    ProviderRejectedClient,
    ReauthorizationRequired,
    UpstreamUnavailable,
    as_broker_error,
    caller_problems,
    problem_responses,
)
from service.routers.accounts import ACCOUNT_REF, AccountRef
from service.schemas import AccessToken
from service.tokens import CachedToken

router = APIRouter(prefix="/v1/accounts", tags=["tokens"])
ROUTE = "/v1/accounts/{account}/access-token"
MAX_MIN_TTL = 3300
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_body(token: CachedToken, now: float) -> bytes:
    # Only expires_in changes between two answers with the same token: the rest is
    # serialised once per token (a new token has a new expiry).
    key = (token.account_id, token.expires_at)
    parts = _serialised.get(key)
    if parts is None:
        if len(_serialised) >= 4096:
            _serialised.clear()
        head = json.dumps(
            {
                "access_token": token.access_token.get_secret_value(),
                "token_type": "Bearer",
                "expires_at": token.expires_at_datetime.isoformat(),
            }
        )
        tail = json.dumps({"scopes": list(token.scopes)})
        parts = _serialised[key] = (
            (head[:-1] + ', "expires_in": ').encode(),
            (", " + tail[1:]).encode(),
        )
    return parts[0] + str(max(0, math.floor(token.remaining(now)))).encode() + parts[1]


_serialised: dict[tuple[str, float], tuple[bytes, bytes]] = {}


@router.get(
    "/{account}/access-token",
    response_model=AccessToken,
    summary="A fresh access token for the account",
    description=(
        "Served from the broker's cache when the cached token has at least `min_ttl` "
        "seconds left; otherwise refreshed, once per expiry however many callers and "
        "replicas ask at once. The response is `Cache-Control: no-store`."
    ),
    responses=problem_responses(
        *caller_problems(),
        AccountNotFound,
        ReauthorizationRequired,
        ProviderRejectedClient,
        UpstreamUnavailable,
    ),
)
async def access_token(
    state: State,
    caller: TokensReader,
    account: AccountRef,
    min_ttl: Annotated[
        int | None,
        Query(ge=0, le=MAX_MIN_TTL, description="Seconds the token must still be valid for."),
    ] = None,
    force_refresh: Annotated[
        bool, Query(description="Refresh even if a cached token would do.")
    ] = False,
) -> Response:
    issued = await state.tokens.access_token(
        account,
        min_ttl=state.settings.default_min_ttl_seconds if min_ttl is None else min_ttl,
        force_refresh=force_refresh,
        client_id=caller.client_id,
    )
    body = token_body(issued.token, state.tokens.clock())
    return Response(body, media_type="application/json", headers=NO_STORE)


@dataclass(frozen=True)
class _Route:
    path: str


_TEMPLATE = _Route(ROUTE)
_PATH = re.compile(r"^/v1/accounts/(" + ACCOUNT_REF[1:-1] + ")/access-token$")
_OK_HEADERS = [
    (b"content-type", b"application/json"),
    *((name.lower().encode(), value.encode()) for name, value in NO_STORE.items()),
]
# The spellings FastAPI accepts for a bool query parameter.
_TRUE = {"true", "1", "on", "yes", "t", "y"}
_FALSE = {"false", "0", "off", "no", "f", "n"}


class TokenFastPath:
    """Serves the access-token endpoint without FastAPI's request machinery.

    It authenticates with the same authenticator, calls the same service, and renders
    the same body and the same problems. A parameter it does not recognise as valid
    goes on to the FastAPI route, which validates it (422) and documents the endpoint.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.match(scope["path"])
            request = self._understood(scope) if match else None
            if request is not None:
                scope["route"] = _TEMPLATE  # what the router would have matched, for metrics
                status, headers, body = await self._answer(match.group(1), *request)  # type: ignore[union-attr]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(
        reference: str, state: BrokerState, key: str | None, min_ttl: int, force_refresh: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            caller = await state.authenticator.authenticate(key)
            caller.require(Permission.TOKENS_READ)
            issued = await state.tokens.access_token(
                reference, min_ttl=min_ttl, force_refresh=force_refresh, client_id=caller.client_id
            )
        except Exception as error:
            mapped = as_broker_error(error)
            if mapped is None:
                raise
            problem = mapped.response()
            return problem.status_code, problem.raw_headers, bytes(problem.body)
        body = token_body(issued.token, state.tokens.clock())
        return 200, [*_OK_HEADERS, (b"content-length", str(len(body)).encode())], body

    @staticmethod
    def _understood(scope: Scope) -> tuple[BrokerState, str | None, int, bool] | None:
        state: BrokerState | None = getattr(scope["app"].state, "broker", None)
        if state is None:
            return None
        min_ttl = state.settings.default_min_ttl_seconds
        force_refresh = False
        for name, value in parse_qsl(scope["query_string"].decode("latin-1")):
            if name == "min_ttl":
                if not value.isdigit() or int(value) > MAX_MIN_TTL:
                    return None
                min_ttl = int(value)
            elif name == "force_refresh":
                flag = value.lower()
                if flag not in _TRUE and flag not in _FALSE:
                    return None
                force_refresh = flag in _TRUE
        key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                key = credentials.strip() if scheme.lower() == "bearer" else None
                break
        return state, key, min_ttl, force_refresh
