"""The SQL that concurrency depends on, on both databases: outbox leases, one-time states,
rotation batches. Each runs against real transactions, racing where the promise is
about races.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlmodel import select

from token_broker.kit.clock import utcnow
from token_broker.store.database import Database
from token_broker.store.models import Account, OAuthState, WebhookDelivery
from token_broker.store.repositories import (
    AccountRepository,
    OAuthStateRepository,
    WebhookRepository,
)


async def _add_delivery(database: Database, *, due_in: float = 0.0) -> str:
    now = utcnow()
    delivery = WebhookDelivery(
        id=str(uuid.uuid4()),
        event_type="account.revoked",
        payload={"n": 1},
        created_at=now,
        next_attempt_at=now + timedelta(seconds=due_in),
    )
    async with database.transaction() as session:
        await WebhookRepository(session).add(delivery)
    return delivery.id


async def _lease(database: Database, lease_seconds: float = 60) -> WebhookDelivery | None:
    now = utcnow()
    async with database.transaction() as session:
        return await WebhookRepository(session).lease_next(
            now, now + timedelta(seconds=lease_seconds)
        )


async def test_a_due_delivery_is_leased_by_exactly_one_of_many_racers(
    database: Database,
) -> None:
    delivery_id = await _add_delivery(database)
    leased = await asyncio.gather(*(_lease(database) for _ in range(8)))
    winners = [row for row in leased if row is not None]
    assert [row.id for row in winners] == [delivery_id]
    assert winners[0].attempts == 1


async def test_a_leased_delivery_is_not_due_until_its_lease_ends(database: Database) -> None:
    await _add_delivery(database)
    assert await _lease(database, lease_seconds=60) is not None
    assert await _lease(database) is None  # leased for a minute: nobody else takes it


async def test_an_expired_lease_is_taken_again_and_counts_the_attempt(database: Database) -> None:
    delivery_id = await _add_delivery(database)
    first = await _lease(database, lease_seconds=-1)  # its holder died: lease already over
    again = await _lease(database)
    assert first is not None
    assert again is not None
    assert again.id == delivery_id
    assert again.attempts == 2


async def test_settled_and_future_deliveries_are_not_leased(database: Database) -> None:
    delivered = await _add_delivery(database)
    await _add_delivery(database, due_in=3600)
    async with database.transaction() as session:
        await WebhookRepository(session).settle(delivered, delivered_at=utcnow())
    assert await _lease(database) is None


async def _add_state(database: Database, *, expires_in: float = 600) -> str:
    now = utcnow()
    state_hash = uuid.uuid4().hex
    async with database.transaction() as session:
        await OAuthStateRepository(session).add(
            OAuthState(
                state_hash=state_hash,
                code_verifier="sealed",
                scopes="openid",
                created_at=now,
                expires_at=now + timedelta(seconds=expires_in),
            )
        )
    return state_hash


async def _consume(database: Database, state_hash: str) -> OAuthState | None:
    async with database.transaction() as session:
        return await OAuthStateRepository(session).consume(state_hash, utcnow())


async def test_a_state_is_consumed_by_exactly_one_of_many_racing_callbacks(
    database: Database,
) -> None:
    state_hash = await _add_state(database)
    results = await asyncio.gather(*(_consume(database, state_hash) for _ in range(8)))
    assert sum(result is not None for result in results) == 1
    assert await _consume(database, state_hash) is None


async def test_expired_and_unknown_states_are_not_consumed(database: Database) -> None:
    expired = await _add_state(database, expires_in=-1)
    assert await _consume(database, expired) is None
    assert await _consume(database, "0" * 64) is None


async def test_purge_removes_used_and_expired_states_only(database: Database) -> None:
    expired = await _add_state(database, expires_in=-1)
    used = await _add_state(database)
    live = await _add_state(database)
    assert await _consume(database, used) is not None
    async with database.transaction() as session:
        purged = await OAuthStateRepository(session).purge_finished(utcnow(), limit=100)
    assert purged == 2
    async with database.transaction() as session:
        left = (await session.exec(select(OAuthState))).all()
    assert [state.state_hash for state in left] == [live]
    assert expired not in {state.state_hash for state in left}


async def test_rotation_batches_walk_every_account_once_in_id_order(database: Database) -> None:
    now = utcnow()
    ids = sorted(str(uuid.uuid4()) for _ in range(7))
    async with database.transaction() as session:
        accounts = AccountRepository(session)
        for number, account_id in enumerate(ids):
            await accounts.save(
                Account(
                    id=account_id,
                    provider="google",
                    subject=f"s{number}",
                    created_at=now,
                    updated_at=now,
                )
            )
    seen: list[str] = []
    after = ""
    while True:
        async with database.transaction() as session:
            batch = await AccountRepository(session).batch_after(after, 3)
        seen.extend(account.id for account in batch)
        if len(batch) < 3:
            break
        after = batch[-1].id
    assert seen == ids
