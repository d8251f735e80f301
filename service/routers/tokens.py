"""Fresh access tokens for internal services."""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.deps import State, TokensReader
from service.errors import (
    AccountNotFound,
    Forbidden,
    ProviderRejectedClient,
    ReauthorizationRequired,
    Unauthenticated,
    UpstreamUnavailable,
    problem_responses,
)
from service.routers.accounts import AccountRef
from service.schemas import AccessToken

router = APIRouter(prefix="/v1/accounts", tags=["tokens"])


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
        Unauthenticated,
        Forbidden,
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
        Query(ge=0, le=3300, description="Seconds the token must still be valid for."),
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
    token = issued.token
    now = state.tokens.clock()
    # Serialized here rather than through response_model: this is the hot path.
    body = json.dumps(
        {
            "access_token": token.access_token.get_secret_value(),
            "token_type": "Bearer",
            "expires_at": token.expires_at_datetime.isoformat(),
            "expires_in": max(0, math.floor(token.remaining(now))),
            "scopes": list(token.scopes),
        }
    )
    return Response(
        body,
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )
