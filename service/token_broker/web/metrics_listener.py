"""`/metrics` on a port of its own (`TOKEN_BROKER_METRICS_PORT`), apart from the API.

A network policy works on ports, not paths: with metrics on their own port, the
API's port can be open to every calling service while the metrics port is open to
the monitoring network only. The listener is a second uvicorn server in the same
event loop, serving the same metrics route over the same state. Its socket is
bound with SO_REUSEPORT, so under `serve --workers N` every worker listens and any
of them answers with the sum over workers (prometheus multiprocess mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from token_broker.web.dependencies import WebState
from token_broker.web.routers import metrics


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The API's server owns the process's signals; this one stops with the lifespan.
        yield


class MetricsListener:
    def __init__(self, state: WebState, host: str, port: int) -> None:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(metrics.router)
        app.state.web = state
        self.host = host
        self.port = port
        self.server = _EmbeddedServer(
            uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self, within_seconds: float = 10.0) -> None:
        family, kind, protocol, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )[0]
        listening = socket.socket(family, kind, protocol)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind(address)
        self._task = asyncio.create_task(self.server.serve(sockets=[listening]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the metrics listener stopped at start")
            if loop.time() > deadline:
                raise TimeoutError("the metrics listener did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self.server.should_exit = True
            await self._task
