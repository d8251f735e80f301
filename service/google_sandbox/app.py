"""The sandbox provider: Google's OAuth 2.0, OpenID Connect and Gmail endpoints, on loopback.

Its wire format follows Google's documented requests, responses and error bodies,
not the broker's convenience, so code written against it works against Google.
Control endpoints under `/_sandbox` switch faults on and read call counters.
"""

from __future__ import annotations

from fastapi import FastAPI

from google_sandbox.batch import batch_router
from google_sandbox.control import control_router
from google_sandbox.faults import FaultsAndCounters
from google_sandbox.gmail import gmail_router
from google_sandbox.gmail_limits import GmailLimits, quota_router
from google_sandbox.messages import messages_router
from google_sandbox.oauth import oauth_router
from google_sandbox.risc import install as install_risc
from google_sandbox.risc import risc_router
from google_sandbox.state import SandboxState


def create_sandbox_app(state: SandboxState) -> FastAPI:
    app = FastAPI(
        title="Token Broker sandbox provider",
        description="Google's OAuth 2.0, OpenID Connect and Gmail endpoints (messages.list, "
        "messages.get, batch, per-user quota) and Cross-Account Protection (the RISC "
        "configuration, stream API and security events), on loopback.",
        version="1",
    )
    app.include_router(oauth_router(state))
    app.include_router(gmail_router(state))
    app.include_router(messages_router(state))
    app.include_router(batch_router(state))
    app.include_router(control_router(state))
    app.include_router(quota_router(state))
    app.include_router(risc_router(state, install_risc(state)))
    app.add_middleware(FaultsAndCounters, state=state)
    # Outside the fault injector: added latency counts as a call in progress.
    app.add_middleware(GmailLimits, state=state)
    app.state.sandbox = state
    return app
