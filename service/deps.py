"""What routes depend on: the typed application state and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.accounts import AccountService
from service.audit import AuditBuffer
from service.auth import Authenticator, Caller, Permission
from service.connect import ConnectService
from service.crypto import Keyring
from service.db import Database
from service.events import ChangeFeed
from service.google.oauth import OAuthClient
from service.keepalive import KeepAlive
from service.listing import ListingService
from service.metrics import Metrics
from service.settings import Settings
from service.shutdown import Drain
from service.tokens import TokenService
from service.webhooks import Webhooks


@dataclass
class BrokerState:
    """Everything `create_app` builds in its lifespan; one per application."""

    settings: Settings
    database: Database
    http: httpx.AsyncClient
    keyring: Keyring
    authenticator: Authenticator
    audit: AuditBuffer
    head_revision: str
    changes: ChangeFeed
    oauth: OAuthClient
    accounts: AccountService
    connect: ConnectService
    tokens: TokenService
    listing: ListingService
    metrics: Metrics
    drain: Drain
    webhooks: Webhooks
    keepalive: KeepAlive


async def get_state(request: Request) -> BrokerState:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool.
    state: BrokerState = request.app.state.broker
    return state


State = Annotated[BrokerState, Depends(get_state)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `token-broker clients create`, sent as a Bearer token.",
)


def require(permission: Permission) -> Callable[..., Awaitable[Caller]]:
    async def authenticated_caller(
        state: State,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        caller = await state.authenticator.authenticate(
            credentials.credentials if credentials else None
        )
        caller.require(permission)
        return caller

    return authenticated_caller


TokensReader = Annotated[Caller, Depends(require(Permission.TOKENS_READ))]
MessagesReader = Annotated[Caller, Depends(require(Permission.MESSAGES_READ))]
AccountsReader = Annotated[Caller, Depends(require(Permission.ACCOUNTS_READ))]
AccountsWriter = Annotated[Caller, Depends(require(Permission.ACCOUNTS_WRITE))]
