"""Watches and push receipts in SQL, on both databases: backfill, claims that two replicas never
share, and receipts that tell a replay from a redelivery."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from token_broker.kit.clock import utcnow
from token_broker.store.database import Database
from token_broker.store.mailbox_watches import MailboxWatchRepository, PushReceiptRepository
from token_broker.store.models import Account, MailboxWatch, WatchStatus
from token_broker.store.repositories import AccountRepository


async def add_accounts(database: Database, count: int, status: str = "active") -> list[str]:
    now = utcnow()
    ids = []
    async with database.transaction() as session:
        for _ in range(count):
            account = Account(
                id=str(uuid.uuid4()), provider="google", subject=uuid.uuid4().hex,
                status=status, created_at=now, updated_at=now,
            )  # fmt: skip
            await AccountRepository(session).save(account)
            ids.append(account.id)
    return ids


async def test_backfill_makes_pending_watches_once_and_reopens_reconnected(
    database: Database,
) -> None:
    active = await add_accounts(database, 3)
    await add_accounts(database, 2, status="revoked")
    now = utcnow()
    async with database.transaction() as session:
        watches = MailboxWatchRepository(session)
        assert await watches.add_missing(now, 2) == 2
        assert await watches.add_missing(now, 10) == 1
        assert await watches.add_missing(now, 10) == 0
        await watches.stop(active[0], now)
    async with database.transaction() as session:
        rows = {w.account_id: w for w, _ in await MailboxWatchRepository(session).listing()}
    assert set(rows) == set(active)
    assert rows[active[0]].status == WatchStatus.STOPPED
    assert rows[active[1]].status == WatchStatus.PENDING
    async with database.transaction() as session:
        assert await MailboxWatchRepository(session).reopen(utcnow()) == 1  # still active
        assert (await MailboxWatchRepository(session).get(active[0])).status == "pending"  # type: ignore[union-attr]


async def test_two_replicas_never_claim_the_same_window(backend: str, database: Database) -> None:
    if backend != "postgres":
        pytest.skip("row claims between replicas: Postgres (SQLite serves one process)")
    ids = await add_accounts(database, 20)
    now = utcnow()
    async with database.transaction() as session:
        watches = MailboxWatchRepository(session)
        await watches.add_missing(now, 100)
        for account_id in ids:
            watch = await watches.get(account_id)
            assert watch is not None
            watch.window_ends_at = now - timedelta(seconds=1)
            watch.pending_history_id = "5"
            await watches.save(watch)
    claimed: list[list[str]] = []
    both_inside = asyncio.Event()
    inside = 0

    async def replica() -> None:
        nonlocal inside
        async with database.transaction() as session:
            rows = await MailboxWatchRepository(session).closed_windows(utcnow(), 15)
            claimed.append([row.account_id for row in rows])
            inside += 1
            if inside == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), 10)  # hold the locks while the other looks

    await asyncio.gather(replica(), replica())
    first, second = claimed
    assert not set(first) & set(second)
    assert len(first) + len(second) == 20


async def test_receipts_tell_a_replay_from_a_redelivery(database: Database) -> None:
    now = utcnow()
    async with database.transaction() as session:
        receipts = PushReceiptRepository(session)
        assert await receipts.record("m1", "token-a", now) is None
        assert await receipts.record("m1", "token-a", now) == "token-a"  # replay
        assert await receipts.record("m1", "token-b", now) == "token-a"  # redelivery
        assert await receipts.record("m2", "token-a", now - timedelta(hours=4)) is None
        assert await receipts.purge(now - timedelta(hours=3)) == 1
        assert await receipts.record("m2", "token-a", now) is None


async def test_counts_by_state_and_expiring(database: Database) -> None:
    ids = await add_accounts(database, 3)
    now = utcnow()
    async with database.transaction() as session:
        watches = MailboxWatchRepository(session)
        await watches.add_missing(now, 10)
        for account_id, expires in zip(
            ids[:2], (timedelta(hours=2), timedelta(days=5)), strict=True
        ):
            watch = await watches.get(account_id)
            assert isinstance(watch, MailboxWatch)
            watch.status, watch.expires_at = WatchStatus.ACTIVE, now + expires
            await watches.save(watch)
        counts = await watches.counts(now + timedelta(days=1))
    assert counts == {"active": 2, "pending": 1, "expiring": 1}
