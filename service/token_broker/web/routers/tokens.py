"""Fresh access tokens for internal services: the documented FastAPI route.

Cache hits are usually answered before this route by `web/token_fast_path.py`,
which calls the same service and renders the same body and problems; this route
owns validation (anything the fast path is not sure of comes here) and the docs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from token_broker.errors import (
    AccountNotFound,
    AccountSuspended,
    AmbiguousAccount,
    ProviderRejectedClient,
    ReauthorizationRequired,
    ScopeNotAllowed,
    ScopeNotGranted,
    UpstreamUnavailable,
    caller_problems,
)
from token_broker.web.dependencies import State, TokensReader
from token_broker.web.problems import problem_responses
from token_broker.web.routers.accounts import AccountRef
from token_broker.web.schemas import AccessToken, Scope

router = APIRouter(prefix="/v1/accounts", tags=["tokens"])
ROUTE = "/v1/accounts/{account}/access-token"
MAX_MIN_TTL = 3300
MAX_SCOPES = 20
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.get(
    "/{account}/access-token",
    response_model=AccessToken,
    summary="A fresh access token for the account",
    description=(
        "Served from the broker's cache when the cached token has at least `min_ttl` "
        "seconds left; otherwise refreshed, once per expiry however many callers and "
        "replicas ask at once. The response is `Cache-Control: no-store`. With `scope` "
        "(repeatable), the grant must hold each scope named, else 403 `scope_not_granted` "
        "with `missing_scopes` and an `authorization_url` that adds them to the account."
    ),
    responses=problem_responses(
        *caller_problems(),
        AccountNotFound,
        AmbiguousAccount,
        ScopeNotAllowed,
        ScopeNotGranted,
        ReauthorizationRequired,
        AccountSuspended,
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
    scope: Annotated[
        list[Scope],
        Query(
            max_length=MAX_SCOPES,
            description="A scope the caller needs (repeatable): the grant must hold it.",
        ),
    ] = [],  # noqa: B006  (FastAPI copies defaults per request)
) -> Response:
    issued = await state.tokens.access_token(
        account,
        min_ttl=state.default_min_ttl if min_ttl is None else min_ttl,
        force_refresh=force_refresh,
        client_id=caller.client_id,
        scopes=scope,
    )
    body = state.token_bodies.body(issued.token, state.tokens.clock())
    return Response(body, media_type="application/json", headers=NO_STORE)
