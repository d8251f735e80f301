"""The sandbox as a server of its own (`token-broker sandbox`, `python -m google_sandbox`).

A staging provider: a broker in production mode points at it with one variable,
`TOKEN_BROKER_ISSUER=<its URL>` (the broker discovers every endpoint from
`/.well-known/openid-configuration`, and uses it for Gmail too). It says so when it
serves.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from google_sandbox.app import create_sandbox_app
from google_sandbox.quota import QuotaSettings
from google_sandbox.state import SandboxState

DEFAULT_REDIRECT_URI = "http://127.0.0.1/v1/oauth/callback"


class _AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_serving: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_serving = on_serving

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_serving()


def banner(url: str, client_id: str, redirect_uris: list[str]) -> str:
    return f"""
Sandbox Google (a stand-in for Google's OAuth, OpenID Connect and Gmail) on {url}
  discovery  {url}/.well-known/openid-configuration
  client     {client_id}, redirect URIs {", ".join(redirect_uris)}
  docs       {url}/docs (faults, counters, users under /_sandbox)
Point a broker at it with TOKEN_BROKER_ISSUER={url}; its consent page takes any email.
"""


def serve(
    *, host: str, port: int, client_id: str, client_secret: str, redirect_uris: list[str],
    quota: QuotaSettings | None = None,
) -> None:  # fmt: skip
    """Serve one OAuth client's sandbox Google on `host:port` until interrupted."""
    url = f"http://{host}:{port}"
    uris = redirect_uris or [DEFAULT_REDIRECT_URI]
    state = SandboxState(issuer=url)
    state.add_client(client_id, client_secret, uris)
    if quota is not None:
        state.quota.configure(quota)
    config = uvicorn.Config(
        create_sandbox_app(state),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    _AnnouncingServer(config, lambda: print(banner(url, client_id, uris), flush=True)).run()
