"""What routes depend on: the services they call, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from token_broker.observability.metrics import Metrics
from token_broker.services.accounts import AccountService
from token_broker.services.api_keys import Authenticator, Caller, Permission
from token_broker.services.authorizations import AuthorizationService
from token_broker.services.connect import ConnectService
from token_broker.services.details import MessageDetailsService
from token_broker.services.gmail_push import PushReceiver
from token_broker.services.listing import ListingService
from token_broker.services.mailbox_changes import ChangesService
from token_broker.services.readiness import Readiness
from token_broker.services.reauthorization import ReauthorizationLinks
from token_broker.services.risc import RiscReceiver
from token_broker.services.tokens import TokenService
from token_broker.web.token_bodies import TokenBodies


@dataclass(frozen=True)
class WebState:
    """What the routes (and the token fast path) use; built once per app in its lifespan."""

    authenticator: Authenticator
    authorizations: AuthorizationService
    links: ReauthorizationLinks
    connect: ConnectService
    accounts: AccountService
    tokens: TokenService
    listing: ListingService
    details: MessageDetailsService
    readiness: Readiness
    risc: RiscReceiver
    metrics: Metrics
    token_bodies: TokenBodies
    default_min_ttl: int
    changes: ChangesService
    push: PushReceiver | None = None  # with TOKEN_BROKER_GMAIL_PUSH_TOPIC only


async def get_state(request: Request) -> WebState:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool.
    state: WebState = request.app.state.web
    return state


State = Annotated[WebState, Depends(get_state)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `token-broker clients create`, sent as a Bearer token.",
)


def require(permission: Permission | None) -> Callable[..., Awaitable[Caller]]:
    """A dependency for an authenticated caller holding `permission` (None: any key)."""

    async def authenticated_caller(
        request: Request,
        state: State,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        caller = await state.authenticator.authenticate(
            credentials.credentials if credentials else None,
            source=request.client.host if request.client else None,
        )
        if permission is not None:
            caller.require(permission)
        return caller

    return authenticated_caller


AnyCaller = Annotated[Caller, Depends(require(None))]
TokensReader = Annotated[Caller, Depends(require(Permission.TOKENS_READ))]
MessagesReader = Annotated[Caller, Depends(require(Permission.MESSAGES_READ))]
AccountsReader = Annotated[Caller, Depends(require(Permission.ACCOUNTS_READ))]
AccountsWriter = Annotated[Caller, Depends(require(Permission.ACCOUNTS_WRITE))]
