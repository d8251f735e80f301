"""The sandbox provider: Google's OAuth 2.0, OpenID Connect and Gmail endpoints, on loopback.

Its wire format follows Google's documented requests, responses and error bodies,
not the broker's convenience, so code written against it works against Google.
Control endpoints under `/_sandbox` switch faults on, change mailboxes, configure
push deliveries and read call counters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api_docs import install_docs
from google_sandbox.batch import batch_router
from google_sandbox.control import control_router
from google_sandbox.faults import FaultsAndCounters
from google_sandbox.gmail import gmail_router
from google_sandbox.gmail_limits import GmailLimits, quota_router
from google_sandbox.mailbox_control import ChangeGenerator, mailbox_control_router
from google_sandbox.messages import messages_router
from google_sandbox.oauth import oauth_router
from google_sandbox.pubsub_control import pubsub_control_router
from google_sandbox.risc import install as install_risc
from google_sandbox.risc import risc_router
from google_sandbox.state import SandboxState
from google_sandbox.sync import sync_router


def create_sandbox_app(state: SandboxState) -> FastAPI:
    generator = ChangeGenerator(state)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # Mounted inside another app (dev mode) this never runs; the process ends them.
        await generator.stop()
        await state.pubsub.aclose()

    app = FastAPI(
        title="Token Broker sandbox provider",
        description="Google's OAuth 2.0, OpenID Connect and Gmail endpoints (messages.list, "
        "messages.get, batch, history.list, getProfile, watch and stop, per-user quota), "
        "Cloud Pub/Sub push deliveries and Cross-Account Protection (the RISC configuration, "
        "stream API and security events), on loopback.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    install_docs(app)
    app.include_router(oauth_router(state))
    app.include_router(gmail_router(state))
    app.include_router(messages_router(state))
    app.include_router(sync_router(state))
    app.include_router(batch_router(state))
    app.include_router(control_router(state))
    app.include_router(mailbox_control_router(state, generator))
    app.include_router(pubsub_control_router(state))
    app.include_router(quota_router(state))
    app.include_router(risc_router(state, install_risc(state)))
    app.add_middleware(FaultsAndCounters, state=state)
    # Outside the fault injector: added latency counts as a call in progress.
    app.add_middleware(GmailLimits, state=state)
    app.state.sandbox = state
    app.state.generator = generator
    return app
