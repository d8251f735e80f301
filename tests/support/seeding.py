"""Many connected accounts at once: sealed rows in the database (and, for the sandbox, live
grants there), for tests that need dozens of accounts. `bench/seed.py` does this at scale.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from tests.support.brokers import TEST_CLIENT_ID, TEST_KEYS
from tests.support.hygiene import register_secret
from tests.support.provider import Provider
from token_broker.kit.clock import utcnow
from token_broker.store.database import create_engine
from token_broker.store.models import Account
from token_broker.store.sealing import Keyring

# As Google names them in token responses (and the broker stores them).
SCOPES = (
    "https://www.googleapis.com/auth/gmail.readonly openid "
    "https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile"
)


@dataclass(frozen=True)
class Seed:
    subject: str
    email: str
    refresh_token: str
    access_token: str


async def insert_accounts(
    database_url: str, seeds: Sequence[Seed], *, expires_in: int = 3600
) -> None:
    """Active accounts whose stored access token expires in `expires_in` seconds (negative:
    already expired), minted an hour ago."""
    keyring = Keyring.parse(TEST_KEYS)
    now = utcnow()
    rows = []
    for seed in seeds:
        register_secret(seed.refresh_token)
        register_secret(seed.access_token)
        account_id = str(uuid.uuid4())
        rows.append({
            "id": account_id, "provider": "google", "subject": seed.subject, "email": seed.email,
            "email_verified": True,
            "status": "active", "scopes": SCOPES,
            "refresh_token": keyring.seal(seed.refresh_token, column=Account.REFRESH_TOKEN, row=account_id),
            "access_token": keyring.seal(seed.access_token, column=Account.ACCESS_TOKEN, row=account_id),
            "access_token_expires_at": now + timedelta(seconds=expires_in),
            "created_at": now, "updated_at": now, "last_refreshed_at": now - timedelta(hours=1),
        })  # fmt: skip
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(sa.insert(Account), rows)
    await engine.dispose()


async def seed_at_sandbox(
    database_url: str, provider: Provider, count: int, *, expires_in: int = 3600
) -> list[str]:
    """`count` accounts with live grants at the sandbox; their subjects."""
    emails = [f"seeded{index}-{uuid.uuid4().hex[:6]}@example.com" for index in range(count)]
    seeded = provider.state.seed(emails, TEST_CLIENT_ID, set(SCOPES.split()))
    seeds = [Seed(user.sub, user.email, refresh, access) for user, refresh, access, _ in seeded]
    await insert_accounts(database_url, seeds, expires_in=expires_in)
    return [seed.subject for seed in seeds]
