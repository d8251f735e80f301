"""Seed N valid accounts: live grants at a sandbox, rows sealed with the project's keyring.

Each account is a sandbox user (`user<i>@<domain>`) with a live grant for the
broker's client (`POST /_sandbox/seed`), stored in the broker's database as `active`
with its refresh and access tokens sealed under TOKEN_BROKER_ENCRYPTION_KEYS (the
keyring the brokers use), exactly as a connect would store it. The stored access
token lives `--expires-in` seconds (negative: already expired, for a refresh storm).
The database must be migrated (`token-broker migrate`). 100,000 accounts take well
under two minutes.

    TOKEN_BROKER_DATABASE_URL=postgresql+asyncpg://… TOKEN_BROKER_ENCRYPTION_KEYS=… \\
    .venv/bin/uv run python -m bench.seed --sandbox http://127.0.0.1:9100 \\
        --client-id bench-client.apps.googleusercontent.com --accounts 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from token_broker.kit.clock import utcnow
from token_broker.settings import load_settings
from token_broker.store.database import create_engine
from token_broker.store.models import Account
from token_broker.store.sealing import Keyring, keyring_from_settings

# No openid: the sandbox then signs no ID token per refresh, so a benchmark's refreshes
# cost the sandbox little and measure the broker.
# As Google names them in token responses (and the broker stores them).
SCOPES = (
    "https://www.googleapis.com/auth/gmail.readonly openid "
    "https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile"
)
CHUNK = 5_000


@dataclass(frozen=True)
class Seeded:
    subject: str
    email: str


async def seed(
    database_url: str,
    sandbox_url: str,
    client_id: str,
    count: int,
    keyring: Keyring,
    *,
    expires_in: int = 3600,
    domain: str = "bench.example",
    start: int = 0,
    scopes: str = SCOPES,
) -> list[Seeded]:
    """`count` accounts, `user<start>…` onwards; what was seeded, in creation order."""
    engine = create_engine(database_url)
    seeded: list[Seeded] = []
    try:
        async with httpx.AsyncClient(base_url=sandbox_url, timeout=300) as sandbox:
            for first in range(start, start + count, CHUNK):
                numbers = range(first, min(start + count, first + CHUNK))
                emails = [f"user{number}@{domain}" for number in numbers]
                answer = await sandbox.post(
                    "/_sandbox/seed",
                    json={"client_id": client_id, "emails": emails, "scopes": scopes},
                )
                answer.raise_for_status()
                rows = _rows(answer.json(), keyring, expires_in, scopes)
                async with engine.begin() as connection:
                    await connection.execute(sa.insert(Account), rows)
                seeded += [Seeded(row["subject"], row["email"]) for row in rows]
    finally:
        await engine.dispose()
    return seeded


def _rows(
    users: list[dict[str, str]], keyring: Keyring, expires_in: int, scopes: str
) -> list[dict[str, Any]]:
    now = utcnow()
    rows = []
    for offset, user in enumerate(users):
        account_id = str(uuid.uuid4())
        created = now + timedelta(microseconds=offset)  # a distinct time each: a real order
        refresh = keyring.seal(user["refresh_token"], column=Account.REFRESH_TOKEN, row=account_id)
        access = keyring.seal(user["access_token"], column=Account.ACCESS_TOKEN, row=account_id)
        rows.append({
            "id": account_id, "provider": "google", "subject": user["sub"], "email": user["email"],
            "email_verified": True,
            "status": "active", "scopes": " ".join(sorted(scopes.split())),
            "refresh_token": refresh, "access_token": access,
            "access_token_expires_at": now + timedelta(seconds=expires_in),
            "created_at": created, "updated_at": now, "last_refreshed_at": now,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--sandbox", required=True, help="the sandbox's base URL")
    parser.add_argument("--client-id", required=True, help="the broker's OAuth client id")
    parser.add_argument("--database-url", default=os.environ.get("TOKEN_BROKER_DATABASE_URL"))
    parser.add_argument("--expires-in", type=int, default=3600, help="stored token's life (s)")
    parser.add_argument("--start", type=int, default=0, help="first user number")
    parser.add_argument("--domain", default="bench.example")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url or TOKEN_BROKER_DATABASE_URL is required")
    keyring = keyring_from_settings(load_settings(database_url=args.database_url))
    started = time.perf_counter()
    seeded = asyncio.run(
        seed(
            args.database_url, args.sandbox, args.client_id, args.accounts, keyring,
            expires_in=args.expires_in, domain=args.domain, start=args.start,
        )
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    print(f"seeded {len(seeded):,} accounts in {elapsed:.1f} s ({len(seeded) / elapsed:,.0f}/s)")


if __name__ == "__main__":
    main()
