"""`python -m service.sandbox`: the sandbox provider on its own, for other services' tests.

    python -m service.sandbox --port 9100 --client-id my-client --client-secret s3cret \\
        --redirect-uri http://127.0.0.1:8000/v1/oauth/callback
"""

from __future__ import annotations

import argparse

import uvicorn

from service.sandbox import SandboxState, create_sandbox_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", default=[])
    args = parser.parse_args()
    state = SandboxState(issuer=f"http://{args.host}:{args.port}")
    state.add_client(
        args.client_id,
        args.client_secret,
        args.redirect_uri or ["http://127.0.0.1/v1/oauth/callback"],
    )
    uvicorn.run(
        create_sandbox_app(state),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
