"""`python -m google_sandbox`: the sandbox provider on its own (same as `token-broker sandbox`).

    python -m google_sandbox --port 9100 --client-id my-client --client-secret s3cret \\
        --redirect-uri http://127.0.0.1:8000/v1/oauth/callback
"""

from __future__ import annotations

import argparse

from google_sandbox.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m google_sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", default=[])
    args = parser.parse_args()
    serve(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uri,
    )


if __name__ == "__main__":
    main()
