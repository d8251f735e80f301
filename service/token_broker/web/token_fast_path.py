"""The access-token endpoint without FastAPI's request machinery, for cache hits.

Internal services ask for a token before every Gmail call, so a cache hit must cost
little more than HTTP itself. Profiling showed FastAPI's dependency solving and
parameter validation costing about twice the rest of the request, so the endpoint
is answered here, a few lines of ASGI in front of the router that call the same
service and render the same body and the same problems. Anything it is not sure
about goes on to the FastAPI route (`web/routers/tokens.py`), which validates it.

It accepts exactly what the route accepts: the query is parsed by Starlette's own
parser and validated by the route's own model (`AccessTokenQuery`), and the key is
read from the header by FastAPI's own function; no second, hand-written parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from token_broker.services.api_keys import Permission
from token_broker.web.dependencies import WebState
from token_broker.web.problems import as_broker_error, problem_response
from token_broker.web.routers.accounts import ACCOUNT_REF
from token_broker.web.routers.tokens import NO_STORE, ROUTE, AccessTokenQuery


@dataclass(frozen=True)
class _Route:
    path: str


_TEMPLATE = _Route(ROUTE)
_PATH = re.compile(r"^/v1/accounts/(" + ACCOUNT_REF[1:-1] + ")/access-token$")
_OK_HEADERS = [
    (b"content-type", b"application/json"),
    *((name.lower().encode(), value.encode()) for name, value in NO_STORE.items()),
]
_DEFAULT_QUERY = AccessTokenQuery()


class TokenFastPath:
    """Serves cache hits (and everything else it is sure of) for the access-token endpoint."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.match(scope["path"])
            request = self._understood(scope) if match else None
            if request is not None:
                scope["route"] = _TEMPLATE  # what the router would have matched, for metrics
                client = scope.get("client")
                status, headers, body = await self._answer(
                    match.group(1),  # type: ignore[union-attr]
                    *request,
                    source=client[0] if client else None,
                )
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(
        reference: str,
        state: WebState,
        key: str | None,
        min_ttl: int,
        force_refresh: bool,
        scopes: tuple[str, ...],
        *,
        source: str | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            caller = await state.authenticator.authenticate(key, source=source)
            caller.require(Permission.TOKENS_READ)
            issued = await state.tokens.access_token(
                reference,
                min_ttl=min_ttl,
                force_refresh=force_refresh,
                client_id=caller.client_id,
                scopes=scopes,
            )
        except Exception as error:
            mapped = as_broker_error(error)
            if mapped is None:
                raise
            problem = problem_response(mapped)
            return problem.status_code, problem.raw_headers, bytes(problem.body)
        body = state.token_bodies.body(issued.token, state.tokens.clock())
        return 200, [*_OK_HEADERS, (b"content-length", str(len(body)).encode())], body

    @staticmethod
    def _understood(
        scope: Scope,
    ) -> tuple[WebState, str | None, int, bool, tuple[str, ...]] | None:
        state: WebState | None = getattr(scope["app"].state, "web", None)
        if state is None:
            return None
        query = _DEFAULT_QUERY
        if scope["query_string"]:
            try:
                query = AccessTokenQuery.from_pairs(
                    QueryParams(scope["query_string"]).multi_items()
                )
            except ValidationError:
                return None  # the route answers it: 422 validation_failed
        key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, credentials = get_authorization_scheme_param(value.decode("latin-1"))
                key = credentials if scheme.lower() == "bearer" and credentials else None
                break
        min_ttl = state.default_min_ttl if query.min_ttl is None else query.min_ttl
        return state, key, min_ttl, query.force_refresh, tuple(query.scope)
