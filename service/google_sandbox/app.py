"""The sandbox provider: Google's OAuth 2.0, OpenID Connect and Gmail list endpoints, on loopback.

Its wire format follows Google's documented requests, responses and error bodies,
not the broker's convenience, so code written against it works against Google.
Control endpoints under `/_sandbox` switch faults on and read call counters.
"""

from __future__ import annotations

from fastapi import FastAPI

from api_docs import install_docs
from google_sandbox.control import control_router
from google_sandbox.faults import FaultsAndCounters
from google_sandbox.gmail import gmail_router
from google_sandbox.oauth import oauth_router
from google_sandbox.state import SandboxState


def create_sandbox_app(state: SandboxState) -> FastAPI:
    app = FastAPI(
        title="Token Broker sandbox provider",
        description="Google's OAuth 2.0, OpenID Connect and Gmail list endpoints, on loopback.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.include_router(oauth_router(state))
    app.include_router(gmail_router(state))
    app.include_router(control_router(state))
    app.add_middleware(FaultsAndCounters, state=state)
    app.state.sandbox = state
    return app
