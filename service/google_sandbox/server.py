"""The sandbox as a server of its own (`token-broker sandbox`, `python -m google_sandbox`)."""

from __future__ import annotations

import uvicorn

from google_sandbox.app import create_sandbox_app
from google_sandbox.quota import QuotaSettings
from google_sandbox.state import SandboxState

DEFAULT_REDIRECT_URI = "http://127.0.0.1/v1/oauth/callback"


def serve(
    *, host: str, port: int, client_id: str, client_secret: str, redirect_uris: list[str],
    quota: QuotaSettings | None = None,
) -> None:  # fmt: skip
    """Serve one OAuth client's sandbox Google on `host:port` until interrupted."""
    state = SandboxState(issuer=f"http://{host}:{port}")
    state.add_client(client_id, client_secret, redirect_uris or [DEFAULT_REDIRECT_URI])
    if quota is not None:
        state.quota.configure(quota)
    uvicorn.run(
        create_sandbox_app(state),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
