"""The sandbox provider as its own process, for benchmarks (so its CPU is not the broker's)."""

from __future__ import annotations

import argparse

import uvicorn

from service.sandbox import SandboxState, create_sandbox_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    args = parser.parse_args()
    state = SandboxState(issuer=f"http://127.0.0.1:{args.port}")
    state.add_client(args.client_id, args.client_secret, ["http://127.0.0.1/v1/oauth/callback"])
    uvicorn.run(
        create_sandbox_app(state),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
