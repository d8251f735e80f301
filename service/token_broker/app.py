"""`create_app(settings)`: the broker as an ASGI application, and the one place it is wired.

Nothing is built at import time. The lifespan builds the engine, the shared httpx
client, the keyring and the services, hands the routes only what they use
(`WebState`), and tears everything down in reverse.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from api_docs import install_docs
from token_broker.google.discovery import DiscoveryFailed, discover_endpoints
from token_broker.google.gmail import GmailClient
from token_broker.google.gmail_details import GmailMessages
from token_broker.google.gmail_sync import GmailSync
from token_broker.google.oauth import OAuthClient
from token_broker.google.push_tokens import PushTokens
from token_broker.google.risc import RiscVerifier
from token_broker.google.transport import Upstream
from token_broker.kit.drain import Drain
from token_broker.kit.rate_limit import RateLimiter
from token_broker.observability.logs import configure_logging, install_request_id_on_records
from token_broker.observability.metrics import Metrics
from token_broker.observability.tracing import Tracing, TracingConfigurationError
from token_broker.services.account_gauges import AccountGauges
from token_broker.services.account_states import AccountStates
from token_broker.services.accounts import AccountService
from token_broker.services.api_keys import Authenticator
from token_broker.services.audit import AuditBuffer
from token_broker.services.authorizations import AuthorizationService
from token_broker.services.connect import ConnectService
from token_broker.services.details import MessageDetailsService
from token_broker.services.gmail_push import PushReceiver
from token_broker.services.gmail_quota import GmailQuota
from token_broker.services.grant_expiry import GrantExpiry
from token_broker.services.keepalive import KeepAlive
from token_broker.services.listing import ListingService
from token_broker.services.mailbox_changes import ChangesService
from token_broker.services.mailbox_notices import MailboxNotices
from token_broker.services.mailbox_watches import WatchKeeper
from token_broker.services.readiness import Readiness
from token_broker.services.reauthorization import ReauthorizationLinks, link_endpoint
from token_broker.services.replicas import Heartbeat
from token_broker.services.risc import RiscReceiver
from token_broker.services.state_sweep import StateSweep
from token_broker.services.tokens import TokenService
from token_broker.services.webhooks import Webhooks
from token_broker.settings import ConfigurationError, Settings, load_settings
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.migrations import head_revision
from token_broker.store.redis_buckets import RedisBuckets, redis_client
from token_broker.store.sealing import Keyring, keyring_from_settings
from token_broker.web.dependencies import WebState
from token_broker.web.html_headers import HtmlSecurityHeaders
from token_broker.web.metrics_listener import MetricsListener
from token_broker.web.problems import (
    install_problem_handlers,
    retag_problem_media_types,
    unexpected_error_response,
)
from token_broker.web.request_context import RequestContextMiddleware
from token_broker.web.request_limits import RequestLimits
from token_broker.web.request_tracing import RequestTracing
from token_broker.web.routers import (
    accounts,
    health,
    message_details,
    messages,
    oauth,
    risc,
    tokens,
)
from token_broker.web.routers import changes as changes_router
from token_broker.web.routers import gmail_push as gmail_push_router
from token_broker.web.routers import metrics as metrics_router
from token_broker.web.token_bodies import TokenBodies
from token_broker.web.token_fast_path import TokenFastPath

log = logging.getLogger("token_broker")


DESCRIPTION = """
Token Broker owns Google's server-side OAuth 2.0 flow with offline access for Gmail:
it exchanges the authorization code once, keeps each account's refresh token
encrypted, and hands internal services fresh access tokens and complete Gmail
message listings.

Every `/v1` endpoint except the OAuth callback and the re-authorization link (both
opened by the user's browser) and the Gmail push endpoint (Pub/Sub's OIDC token)
takes an API key as `Authorization: Bearer tbk_...`. Every error is
`application/problem+json` (RFC 9457) with a stable `code`.

A connect flow's result is confirmed with `GET /v1/authorizations/{id}` by the client
that started it; the redirect back to `return_to` carries only the id and a status.
"""


@dataclass(frozen=True)
class Components:
    """What the lifespan built and owns; `app.state.broker` (tests look inside)."""

    settings: Settings
    database: Database
    keyring: Keyring
    authenticator: Authenticator
    audit: AuditBuffer
    connect: ConnectService
    tokens: TokenService
    listing: ListingService
    details: MessageDetailsService
    gmail_quota: GmailQuota
    keepalive: KeepAlive
    account_gauges: AccountGauges
    state_sweep: StateSweep
    grant_expiry: GrantExpiry
    risc: RiscReceiver
    mailbox_changes: ChangesService | None = None
    watches: WatchKeeper | None = None  # with TOKEN_BROKER_GMAIL_PUSH_TOPIC only
    notices: MailboxNotices | None = None


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


def refusal(problems: list[str]) -> ConfigurationError:
    """Say why the app cannot start, one line per problem; the error to raise.

    The server then reports the failed start without repeating it as a traceback
    (observability/logs.py).
    """
    for problem in problems:
        log.error("cannot start: %s", problem)
    return ConfigurationError(problems)


def create_app(
    settings: Settings,
    *,
    mounts: Mapping[str, ASGIApp] | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The broker; `mounts` adds other ASGI apps under path prefixes (dev mode's sandbox).

    `tracing` (from `tracing_from_environment`, or a test's exporter) turns on spans;
    without it no tracing code runs at all.
    """
    install_request_id_on_records()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        problems = settings.serving_problems()
        if problems:
            raise refusal(problems)
        try:
            keyring = keyring_from_settings(settings)
        except ConfigurationError as error:
            raise refusal(error.problems) from None
        async with AsyncExitStack() as stack:
            tracer = None
            if tracing is not None:
                tracer = tracing.start()
                stack.callback(tracing.shutdown)  # last out: spans of the shutdown included
            drain = Drain()
            drain.install()
            stack.callback(drain.uninstall)
            database = Database.for_settings(settings, tracer=tracer)
            stack.push_async_callback(database.dispose)
            http = build_http_client(settings)
            stack.push_async_callback(http.aclose)
            # httpcore loads anyio's asyncio backend on its first request: do it now,
            # not while the first refresh (and everyone waiting on it) stands still.
            anyio.Event()
            audit = AuditBuffer(
                database,
                window_seconds=settings.token_audit_window_seconds,
                on_drop=metrics.audit_dropped.inc,
            )
            audit.start()
            stack.push_async_callback(audit.stop)
            upstream = Upstream(http, observer=metrics.observe_upstream, tracer=tracer)
            try:
                endpoints = await discover_endpoints(upstream, settings)
            except DiscoveryFailed as error:
                raise refusal([str(error)]) from None
            if endpoints.discovered_from is not None:
                log.info("provider endpoints discovered from %s", endpoints.discovered_from)
            oauth_client = OAuthClient(upstream, settings, endpoints)
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
            heartbeat = Heartbeat(database, keyring)
            await heartbeat.start()
            stack.push_async_callback(heartbeat.stop)
            webhooks = Webhooks(database, http, settings, metrics, tracer=tracer)
            webhooks.start()
            stack.push_async_callback(webhooks.stop)
            account_states = AccountStates(
                keyring,
                webhooks,
                publishing_status=settings.google_publishing_status,
                metrics=metrics,
            )
            grant_expiry = GrantExpiry(database, account_states, webhooks, metrics, settings)
            grant_expiry.start()
            stack.push_async_callback(grant_expiry.stop)
            risc_receiver = RiscReceiver(
                database=database,
                account_states=account_states,
                verifier=RiscVerifier(
                    upstream,
                    configuration_url=settings.effective_risc_configuration_url,
                    audiences=settings.risc_audience_set,
                    cache_seconds=settings.jwks_cache_seconds,
                ),
                changes=changes,
                webhooks=webhooks,
                metrics=metrics,
                max_age_seconds=settings.risc_max_age_seconds,
                issuers=oauth_client.issuers,
            )
            authorizations = AuthorizationService(
                database=database, keyring=keyring, oauth=oauth_client, settings=settings
            )
            state_sweep = StateSweep(database, settings)
            state_sweep.start()
            stack.push_async_callback(state_sweep.stop)
            assert settings.redirect_uri is not None  # serving_problems() checked it
            links = ReauthorizationLinks(
                authorizations=authorizations,
                database=database,
                keyring=keyring,
                endpoint=link_endpoint(settings.redirect_uri),
                lifetime_seconds=settings.reauthorization_link_ttl_seconds,
            )
            connect = ConnectService(
                database=database,
                authorizations=authorizations,
                links=links,
                account_states=account_states,
                oauth=oauth_client,
                settings=settings,
                changes=changes,
                webhooks=webhooks,
            )
            tokens = TokenService(
                database=database,
                account_states=account_states,
                oauth=oauth_client,
                links=links,
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
            shared_buckets = None
            if settings.redis_url is not None:
                shared_buckets = RedisBuckets(
                    redis_client(
                        settings.redis_url.get_secret_value(),
                        timeout=settings.redis_timeout_seconds,
                    ),
                    prefix=settings.redis_key_prefix,
                )
            gmail_quota = GmailQuota(settings, metrics, shared=shared_buckets)
            stack.push_async_callback(gmail_quota.close)
            listing = ListingService(
                gmail=GmailClient(upstream, endpoints.gmail_api_base),
                tokens=tokens,
                links=links,
                settings=settings,
                audit=audit,
                metrics=metrics,
                drain=drain,
                quota=gmail_quota,
            )
            details = MessageDetailsService(
                gmail=GmailMessages(upstream, settings.gmail_api_base),
                quota=gmail_quota,
                listing=listing,
                settings=settings,
            )
            gmail_sync = GmailSync(upstream, settings.gmail_api_base)
            mailbox_changes = ChangesService(
                gmail=gmail_sync, details=details, signer=keyring.token_signer(), audit=audit,
                drain=drain,
            )  # fmt: skip
            notices = watches = push = None
            if settings.gmail_push_enabled:
                assert settings.gmail_push_audience
                assert settings.gmail_push_service_account
                notices = MailboxNotices(database, webhooks, mailbox_changes, settings, metrics)
                notices.start()
                stack.push_async_callback(notices.stop)
                watches = WatchKeeper(
                    database=database, gmail=gmail_sync, changes=mailbox_changes,
                    notices=notices, feed=changes, settings=settings, metrics=metrics,
                )  # fmt: skip
                watches.start()
                stack.push_async_callback(watches.stop_background)
                push_tokens = PushTokens(
                    oauth_client,
                    audience=settings.gmail_push_audience,
                    service_account=settings.gmail_push_service_account,
                    leeway_seconds=settings.id_token_leeway_seconds,
                )
                push = PushReceiver(database, push_tokens, notices, metrics)
            accounts = AccountService(
                database,
                account_states=account_states,
                oauth=oauth_client,
                changes=changes,
                watches=watches,
                cursors=keyring.token_signer(),
            )
            account_gauges = AccountGauges(
                accounts, metrics, interval=settings.metrics_accounts_interval_seconds,
                watches=watches,
            )  # fmt: skip
            if settings.metrics_enabled:
                account_gauges.start()
                stack.push_async_callback(account_gauges.stop)
            app.state.broker = Components(
                settings=settings,
                database=database,
                keyring=keyring,
                authenticator=authenticator,
                audit=audit,
                connect=connect,
                tokens=tokens,
                listing=listing,
                details=details,
                gmail_quota=gmail_quota,
                keepalive=keepalive,
                account_gauges=account_gauges,
                mailbox_changes=mailbox_changes,
                watches=watches,
                notices=notices,
                state_sweep=state_sweep,
                grant_expiry=grant_expiry,
                risc=risc_receiver,
            )
            app.state.web = WebState(
                authenticator=authenticator,
                authorizations=authorizations,
                links=links,
                connect=connect,
                accounts=accounts,
                tokens=tokens,
                listing=listing,
                details=details,
                readiness=Readiness(
                    database=database,
                    keyring=keyring,
                    drain=drain,
                    head_revision=head_revision(),
                    gmail_quota=gmail_quota,
                ),
                risc=risc_receiver,
                metrics=metrics,
                token_bodies=TokenBodies(settings.token_cache_size),
                default_min_ttl=settings.default_min_ttl_seconds,
                changes=mailbox_changes,
                push=push,
            )
            if settings.metrics_enabled and settings.metrics_port is not None:
                listener = MetricsListener(
                    app.state.web, settings.metrics_host, settings.metrics_port
                )
                await listener.start()
                stack.push_async_callback(listener.stop)
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
        docs_url=None,
        redoc_url=None,
        # Metrics are Prometheus (observability/metrics.py); FastAPI's own OpenTelemetry
        # hooks would only look for providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_problem_handlers(app)
    # Added first, so they run inside the request context (ids, access log, metrics).
    app.add_middleware(HtmlSecurityHeaders, exempt_prefixes=tuple(mounts or {}))
    app.add_middleware(TokenFastPath)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestContextMiddleware,
        access_log=settings.access_log_active,
        error_response=unexpected_error_response,
        on_response=metrics.observe_http,
    )
    install_docs(app)
    if tracing is not None:
        # Outermost: the request's span is current for its access line and every log line.
        app.add_middleware(RequestTracing, tracing=tracing)
    app.include_router(health.router)
    app.include_router(oauth.router)
    app.include_router(accounts.router)
    app.include_router(tokens.router)
    app.include_router(messages.router)
    app.include_router(message_details.router)
    app.include_router(changes_router.router)
    app.include_router(gmail_push_router.router)
    app.include_router(risc.router)
    if settings.metrics_enabled and settings.metrics_port is None:
        app.include_router(metrics_router.router)
    for prefix, mounted in (mounts or {}).items():
        app.mount(prefix, mounted)

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


def tracing_from_environment() -> Tracing | None:
    """Tracing as the standard `OTEL_*` variables configure it (None: off)."""
    try:
        return Tracing.from_environment(os.environ)
    except TracingConfigurationError as error:
        raise ConfigurationError(error.problems) from None


def create_app_from_environment() -> FastAPI:
    """Entry point for `uvicorn --factory` (one call per worker process)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    return create_app(settings, tracing=tracing_from_environment())
