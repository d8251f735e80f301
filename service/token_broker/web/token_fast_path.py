"""The access-token endpoint without FastAPI's request machinery, for cache hits.

Internal services ask for a token before every Gmail call, so a cache hit must cost
little more than HTTP itself. Profiling showed FastAPI's dependency solving and
parameter validation costing about twice the rest of the request, so the endpoint
is answered here, a few lines of ASGI in front of the router that call the same
service and render the same body and the same problems. Anything it is not sure
about goes on to the FastAPI route (`web/routers/tokens.py`), which validates it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from token_broker.services.api_keys import Permission
from token_broker.web.dependencies import WebState
from token_broker.web.problems import as_broker_error, problem_response
from token_broker.web.routers.accounts import ACCOUNT_REF
from token_broker.web.routers.tokens import MAX_MIN_TTL, MAX_SCOPES, NO_STORE, ROUTE
from token_broker.web.schemas import TOKEN_TEXT


@dataclass(frozen=True)
class _Route:
    path: str


_TEMPLATE = _Route(ROUTE)
_PATH = re.compile(r"^/v1/accounts/(" + ACCOUNT_REF[1:-1] + ")/access-token$")
_SCOPE = re.compile(TOKEN_TEXT)
MAX_SCOPE_LENGTH = 256
_OK_HEADERS = [
    (b"content-type", b"application/json"),
    *((name.lower().encode(), value.encode()) for name, value in NO_STORE.items()),
]
# The spellings FastAPI accepts for a bool query parameter.
_TRUE = {"true", "1", "on", "yes", "t", "y"}
_FALSE = {"false", "0", "off", "no", "f", "n"}


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
                status, headers, body = await self._answer(match.group(1), *request)  # type: ignore[union-attr]
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
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            caller = await state.authenticator.authenticate(key)
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
        min_ttl = state.default_min_ttl
        force_refresh = False
        scopes: list[str] = []
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
            elif name == "scope":
                if len(value) > MAX_SCOPE_LENGTH or not _SCOPE.match(value):
                    return None
                scopes.append(value)
        if len(scopes) > MAX_SCOPES:
            return None
        key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                key = credentials.strip() if scheme.lower() == "bearer" else None
                break
        return state, key, min_ttl, force_refresh, tuple(scopes)
