"""`python -m google_sandbox`: the sandbox provider on its own (same as `token-broker sandbox`).

    python -m google_sandbox --port 9100 --client-id my-client --client-secret s3cret \\
        --redirect-uri http://127.0.0.1:8000/v1/oauth/callback
"""

from __future__ import annotations

import argparse

from google_sandbox.quota import QuotaSettings
from google_sandbox.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m google_sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", default=[])
    parser.add_argument(
        "--gmail-quota-per-minute", type=int, help="enforce Gmail's per-user units a minute"
    )
    parser.add_argument("--gmail-quota-burst", type=int, help="most units a user's bucket holds")
    parser.add_argument(
        "--gmail-concurrent-limit", type=int, help="Gmail calls in progress per user (e.g. 64)"
    )
    parser.add_argument("--gmail-quota-status", type=int, choices=(429, 403), default=429)
    args = parser.parse_args()
    serve(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uri,
        quota=QuotaSettings(
            units_per_minute=args.gmail_quota_per_minute,
            burst_units=args.gmail_quota_burst,
            concurrent_limit=args.gmail_concurrent_limit,
            exceeded_status=args.gmail_quota_status,
        ),
    )


if __name__ == "__main__":
    main()
