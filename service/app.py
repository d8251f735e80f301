"""`create_app(settings)`: the broker as an ASGI application.

Nothing is built at import time. The lifespan builds the engine, the shared
httpx client, the keyring and the services, and tears them down in reverse.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.accounts import AccountService
from service.audit import AuditBuffer
from service.auth import Authenticator
from service.connect import ConnectService
from service.crypto import Keyring, KeyringError
from service.db import Database, create_engine, head_revision
from service.deps import BrokerState
from service.errors import (
    install_problem_handlers,
    retag_problem_media_types,
    unexpected_error_response,
)
from service.events import ChangeFeed
from service.google.gmail import GmailClient
from service.google.oauth import OAuthClient
from service.google.transport import Upstream
from service.keepalive import KeepAlive
from service.limits import RequestLimits
from service.listing import ListingService
from service.metrics import Metrics
from service.observability import (
    RequestContextMiddleware,
    configure_logging,
    install_request_id_on_records,
)
from service.ratelimit import RateLimiter
from service.routers import accounts, health, messages, oauth, tokens
from service.routers import metrics as metrics_router
from service.settings import ConfigurationError, Settings, env_name, load_settings
from service.shutdown import Drain
from service.tokens import TokenService
from service.webhooks import Webhooks

log = logging.getLogger("token_broker")

DESCRIPTION = """
Token Broker owns Google's server-side OAuth 2.0 flow with offline access for Gmail:
it exchanges the authorization code once, keeps each account's refresh token
encrypted, and hands internal services fresh access tokens and complete Gmail
message listings.

Every `/v1` endpoint except the OAuth callback takes an API key as
`Authorization: Bearer tbk_...`. Every error is `application/problem+json`
(RFC 9457) with a stable `code`.
"""


def build_keyring(settings: Settings) -> Keyring:
    if settings.encryption_keys is None:
        if not settings.is_development:
            raise ConfigurationError(
                [f"{env_name('encryption_keys')}: required outside development"]
            )
        log.warning(
            "no %s set: using a throwaway key; secrets stored now will not open after a restart",
            env_name("encryption_keys"),
        )
        return Keyring.parse(Keyring.generate_entry("ephemeral"))
    try:
        return Keyring.parse(settings.encryption_keys.get_secret_value())
    except KeyringError as error:
        raise ConfigurationError([f"{env_name('encryption_keys')}: {error}"]) from None


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one upstream client: explicit timeouts and pool limits, no redirects followed."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            settings.http_timeout_seconds, connect=settings.http_connect_timeout_seconds
        ),
        limits=httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=settings.http_max_connections,
        ),
        headers={"User-Agent": f"token-broker/{version('token-broker')}"},
        follow_redirects=False,
    )


def create_app(settings: Settings) -> FastAPI:
    install_request_id_on_records()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        problems = settings.serving_problems()
        if problems:
            raise ConfigurationError(problems)
        keyring = build_keyring(settings)
        async with AsyncExitStack() as stack:
            drain = Drain()
            drain.install()
            stack.callback(drain.uninstall)
            database = Database(
                create_engine(
                    settings.database_url,
                    pool_size=settings.db_pool_size,
                    max_overflow=settings.db_max_overflow,
                    pool_timeout=settings.db_pool_timeout_seconds,
                )
            )
            stack.push_async_callback(database.dispose)
            http = build_http_client(settings)
            stack.push_async_callback(http.aclose)
            # httpcore loads anyio's asyncio backend on its first request: do it now,
            # not while the first refresh (and everyone waiting on it) stands still.
            anyio.Event()
            audit = AuditBuffer(database, on_drop=metrics.audit_dropped.inc)
            audit.start()
            stack.push_async_callback(audit.stop)
            upstream = Upstream(http, observer=metrics.observe_upstream)
            oauth_client = OAuthClient(upstream, settings)
            changes = ChangeFeed()
            if database.is_postgres:
                changes.listen(settings.database_url)
                stack.push_async_callback(changes.stop)
            authenticator = Authenticator(
                database,
                ttl=settings.api_key_cache_seconds,
                per_client=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
                lookups=RateLimiter(
                    settings.key_lookups_per_second, settings.key_lookups_per_second * 2
                ),
            )
            changes.subscribe(authenticator.on_change)
            webhooks = Webhooks(database, http, settings, metrics)
            webhooks.start()
            stack.push_async_callback(webhooks.stop)
            connect = ConnectService(
                database=database,
                keyring=keyring,
                oauth=oauth_client,
                settings=settings,
                changes=changes,
                webhooks=webhooks,
            )
            tokens = TokenService(
                database=database,
                keyring=keyring,
                oauth=oauth_client,
                connect=connect,
                settings=settings,
                audit=audit,
                changes=changes,
                metrics=metrics,
                webhooks=webhooks,
            )
            keepalive = KeepAlive(database, tokens, settings)
            if settings.keepalive_active:
                keepalive.start()
                stack.push_async_callback(keepalive.stop)
            app.state.broker = BrokerState(
                settings=settings,
                database=database,
                http=http,
                keyring=keyring,
                authenticator=authenticator,
                audit=audit,
                head_revision=head_revision(),
                changes=changes,
                oauth=oauth_client,
                accounts=AccountService(
                    database, keyring=keyring, oauth=oauth_client, changes=changes
                ),
                connect=connect,
                tokens=tokens,
                listing=ListingService(
                    gmail=GmailClient(upstream, settings.gmail_api_base),
                    tokens=tokens,
                    settings=settings,
                    audit=audit,
                    metrics=metrics,
                    drain=drain,
                ),
                metrics=metrics,
                drain=drain,
                webhooks=webhooks,
                keepalive=keepalive,
            )
            # Everything built so far lives as long as the process: keep it out of the
            # cyclic collector's full passes, which otherwise stall the loop for tens
            # of milliseconds (they showed as the access-token p99).
            gc.freeze()
            yield
            # Shutting down: anything still running (a stream past the grace period)
            # sees the drain flag; background tasks stop before the pool closes.
            drain.begin()

    app = FastAPI(
        title="Token Broker",
        version=version("token-broker"),
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics are Prometheus (service.metrics); FastAPI's own OpenTelemetry hooks
        # would only look for providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_problem_handlers(app)
    # Added first, so they run inside the request context (ids, access log, metrics).
    app.add_middleware(tokens.TokenFastPath)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestContextMiddleware,
        access_log=settings.access_log_active,
        error_response=unexpected_error_response,
        on_response=metrics.observe_http,
    )
    app.include_router(health.router)
    app.include_router(oauth.router)
    app.include_router(accounts.router)
    app.include_router(tokens.router)
    app.include_router(messages.router)
    if settings.metrics_enabled:
        app.include_router(metrics_router.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = retag_problem_media_types(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app_from_environment() -> FastAPI:
    """Entry point for `uvicorn --factory` (one call per worker process)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    return create_app(settings)
