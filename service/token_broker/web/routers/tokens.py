"""Fresh access tokens for internal services: the documented FastAPI route.

Cache hits are usually answered before this route by `web/token_fast_path.py`,
which calls the same service and renders the same body and problems; this route
owns validation (anything the fast path is not sure of comes here) and the docs.
Both read the query through one definition, `AccessTokenQuery`, so they accept
exactly the same requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from token_broker.errors import (
    AccountNotFound,
    AccountSuspended,
    AmbiguousAccount,
    KeyUnavailable,
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


class AccessTokenQuery(BaseModel):
    """The endpoint's query parameters, for the route and the fast path alike.

    Values are read as FastAPI reads query parameters (the last of repeated ones, every
    one for `scope`); parameters the endpoint does not know are ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    min_ttl: int | None = Field(
        default=None, ge=0, le=MAX_MIN_TTL, description="Seconds the token must still be valid for."
    )
    force_refresh: bool = Field(
        default=False,
        description="Refresh even if a cached token would do: at most once per account every "
        "TOKEN_BROKER_FORCED_REFRESH_INTERVAL_SECONDS (5); inside it, the token the last "
        "forced refresh minted.",
    )
    scope: list[Scope] = Field(
        default_factory=list,
        max_length=MAX_SCOPES,
        description="A scope the caller needs (repeatable): the grant must hold it.",
    )

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> AccessTokenQuery:
        """The query from its (name, value) pairs, read as FastAPI reads them."""
        values: dict[str, Any] = {}
        for name, value in pairs:
            if name == "scope":
                values.setdefault("scope", []).append(value)
            else:
                values[name] = value
        return cls.model_validate(values)


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
        KeyUnavailable,
    ),
)
async def access_token(
    state: State,
    caller: TokensReader,
    account: AccountRef,
    query: Annotated[AccessTokenQuery, Query()],
) -> Response:
    issued = await state.tokens.access_token(
        account,
        min_ttl=state.default_min_ttl if query.min_ttl is None else query.min_ttl,
        force_refresh=query.force_refresh,
        client_id=caller.client_id,
        scopes=query.scope,
    )
    body = state.token_bodies.body(issued.token, state.tokens.clock())
    return Response(body, media_type="application/json", headers=NO_STORE)
