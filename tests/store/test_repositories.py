"""The SQL that concurrency and scale depend on, on both databases: outbox leases, one-time
states, rotation batches, the keyset walk and the indexes behind it. Each runs against
real transactions, racing where the promise is about races.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
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
            batch = await AccountRepository(session).sealed_after(after, 3)
        seen.extend(row.id for row in batch)
        if len(batch) < 3:
            break
        after = batch[-1].id
    assert seen == ids


async def _accounts_with_shared_creation_times(database: Database, count: int) -> list[Account]:
    base = utcnow()
    accounts = [
        Account(
            id=str(uuid.uuid4()), provider="google", subject=f"s{number}",
            status="revoked" if number % 3 == 0 else "active",
            created_at=base + timedelta(seconds=number // 5),  # five at a time share one
            updated_at=base,
        )
        for number in range(count)
    ]  # fmt: skip
    async with database.transaction() as session:
        for account in accounts:
            await AccountRepository(session).save(account)
    return sorted(accounts, key=lambda account: (account.created_at, account.id))


async def test_the_keyset_walk_visits_every_account_once_in_order(database: Database) -> None:
    accounts = await _accounts_with_shared_creation_times(database, 23)
    for status in (None, "active"):
        seen: list[str] = []
        after = None
        while True:
            async with database.transaction() as session:
                page = await AccountRepository(session).page(
                    email=None, status=status, after=after, limit=4
                )
            seen.extend(account.id for account in page)
            if len(page) < 4:
                break
            after = (page[-1].created_at, page[-1].id)
        expected = [a.id for a in accounts if status is None or a.status == status]
        assert seen == expected


async def _plan(
    database: Database,
    run: Callable[[AccountRepository], Awaitable[Any]],
    *,
    sorts: bool = False,
) -> str:
    """The database's plan for the one query `run` makes, with scans (and, unless
    `sorts`, sorts) made as unattractive as possible, so the plan shows whether an index
    *can* answer it."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    sa.event.listen(database.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with database.transaction() as session:
            await run(AccountRepository(session))
    finally:
        sa.event.remove(database.engine.sync_engine, "before_cursor_execute", capture)
    ((statement, parameters),) = captured
    async with database.engine.connect() as connection:
        if database.is_postgres:
            await connection.exec_driver_sql("SET enable_seqscan = off")
            if not sorts:
                await connection.exec_driver_sql("SET enable_sort = off")
            explain = "EXPLAIN "
        else:
            explain = "EXPLAIN QUERY PLAN "
        rows = (await connection.exec_driver_sql(explain + statement, parameters)).all()
    return "\n".join(str(row[-1]) for row in rows)


async def test_indexes_answer_the_walk_and_the_keepalive_query(database: Database) -> None:
    await _accounts_with_shared_creation_times(database, 5)
    after = (utcnow(), str(uuid.uuid4()))
    walk = await _plan(database, lambda r: r.page(email=None, status=None, after=after, limit=50))
    by_status = await _plan(
        database, lambda r: r.page(email=None, status="active", after=after, limit=50)
    )
    stale = await _plan(database, lambda r: r.stale_ids(utcnow(), 50))
    if database.is_postgres:
        assert "Index Cond: (ROW(created_at, (id)::text) > ROW(" in walk, walk
        assert "ix_accounts_created_at_id" in walk, walk
        assert "ix_accounts_status_created_at_id" in by_status, by_status
        assert "ix_accounts_status_last_used" in stale, stale
        assert "Sort" not in walk + by_status + stale
    else:
        assert "USING INDEX ix_accounts_created_at_id ((created_at,id)>(?,?))" in walk, walk
        assert "ix_accounts_status_created_at_id (status=? AND (created_at,id)>" in by_status
        assert "USING INDEX ix_accounts_status_last_used" in stale, stale
        assert "TEMP B-TREE" not in walk + by_status + stale


async def test_lookups_by_email_are_answered_by_indexes(database: Database) -> None:
    # Thousands of accounts of one provider, as a planner sees them once it has
    # statistics: the queries must match the indexes' keys and predicates to be taken.
    base = utcnow()
    async with database.engine.begin() as connection:
        await connection.execute(
            sa.insert(Account),
            [
                {
                    "id": str(uuid.uuid4()), "provider": "google", "subject": f"{number}",
                    "email": f"user{number}@example.com", "email_verified": True,
                    "scopes": "openid", "status": "active", "created_at": base,
                    "updated_at": base, "newer_refresh_tokens": 0,
                }
                for number in range(3000)
            ],
        )  # fmt: skip
        await connection.exec_driver_sql("ANALYZE")
    verified = await _plan(
        database, lambda r: r.with_verified_email("google", "user7@example.com"), sorts=True
    )
    resolved = await _plan(database, lambda r: r.resolve("google", "user7@example.com"), sorts=True)
    if database.is_postgres:
        assert "ix_accounts_verified_email" in verified, verified
        # Subject or verified email, in one query: each side found through an index.
        assert "BitmapOr" in resolved, resolved
        assert "Index Cond: (((provider)::text = 'google'::text) AND ((subject)" in resolved
        assert "Index Cond: ((email)" in resolved or "AND ((email)" in resolved, resolved
    else:
        # SQLite may take the plain email index: it too finds the address, not the provider.
        assert "email=?" in verified, verified
        assert "MULTI-INDEX OR" in resolved, resolved
        assert "(provider=? AND subject=?)" in resolved, resolved
    for plan in (verified, resolved):
        assert "SCAN accounts" not in plan, plan
