"""Gmail watches: made when an account connects, renewed daily, stopped when it is deleted.

Gmail pushes a mailbox's changes only while a `users.watch` on it lasts (7 days; Google
asks for a renewal every day, push guide https://developers.google.com/gmail/api/guides/push).
With `TOKEN_BROKER_GMAIL_PUSH_TOPIC` set:

- Connect: the replica that connects an account (or reconnects a revoked one) hears of
  it through the change feed and calls `users.watch` at once; any active account
  without a watch (connected before push was configured, or while the call failed) is
  picked up by the next sweep.
- Renewal: one replica at a time (a Postgres advisory lock, `store/leadership.py`)
  sweeps every tenth of the fallback time (at most a minute). Each account renews at
  its own second of the day (a hash of its id), 12 to 36 hours after its last watch,
  so renewals spread over the day; at most `TOKEN_BROKER_GMAIL_WATCH_RENEWALS_PER_MINUTE`
  go out, the most overdue first. A failed call is retried after 1, 5, 15, then 60
  minutes, well inside the week the watch lasts.
- Deletion: `users.stop` before the grant is revoked (best effort, bounded). A grant
  found dead cannot call Gmail any more: its watch is marked stopped
  (`services/account_states.py`), never renewed, its pushes dropped, and Gmail ends it
  within the week.
- The same sweep runs the fallback check (`services/mailbox_notices.py`) and purges
  old push receipts.

Every watch call spends 100 units of the account's Gmail quota (`services/gmail_quota.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from token_broker.errors import AccountNotFound, BrokerError, ReauthorizationRequired
from token_broker.google.gmail_sync import GmailSync
from token_broker.kit.background import Background
from token_broker.kit.clock import utcnow
from token_broker.observability.metrics import Metrics
from token_broker.services.account_states import PROVIDER
from token_broker.services.gmail_push import RECEIPTS_KEPT
from token_broker.services.mailbox_changes import ChangesService
from token_broker.services.mailbox_notices import MailboxNotices
from token_broker.settings import Settings
from token_broker.store.change_feed import ChangeFeed, Kind
from token_broker.store.database import Database
from token_broker.store.leadership import leadership
from token_broker.store.mailbox_watches import MailboxWatchRepository, PushReceiptRepository
from token_broker.store.models import AccountStatus, MailboxWatch, WatchStatus
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.watches")

LEADER_LOCK = 0x6D61696C626F78  # "mailbox": the advisory lock key for the sweep
RENEWAL_LEASE = timedelta(minutes=10)  # a claimed renewal nobody finished is retried after
RETRY_AFTER = (60, 300, 900, 3600)  # seconds after the 1st, 2nd, 3rd, later failures
EARLIEST_RENEWAL = timedelta(hours=12)
STOP_TIMEOUT = 10.0
AT_ONCE = 8
BACKFILL = 500
Outcome = Literal["ok", "failed", "revoked", "deleted"]


@dataclass(frozen=True)
class Renewal:
    account_id: str
    outcome: Outcome
    expires_at: datetime | None = None
    error: str | None = None


@dataclass
class SweepReport:
    leader: bool
    renewals: Counter[str]
    checks: Counter[str]


async def watch_listing(database: Database) -> list[tuple[MailboxWatch, str | None]]:
    """Every watch with its account's email, soonest renewal first."""
    async with database.transaction() as session:
        return list(await MailboxWatchRepository(session).listing())


def next_renewal(account_id: str, after: datetime) -> datetime:
    """The account's own second of the day, 12 to 36 hours after `after`."""
    slot = int.from_bytes(hashlib.sha256(account_id.encode()).digest()[:4], "big") % 86_400
    earliest = after + EARLIEST_RENEWAL
    midnight = earliest.replace(hour=0, minute=0, second=0, microsecond=0)
    candidate = midnight + timedelta(seconds=slot)
    return candidate if candidate >= earliest else candidate + timedelta(days=1)


class WatchKeeper:
    def __init__(
        self,
        *,
        database: Database,
        gmail: GmailSync,
        changes: ChangesService,
        notices: MailboxNotices,
        feed: ChangeFeed,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        assert settings.gmail_push_topic is not None
        self.database = database
        self.gmail = gmail
        self.changes = changes
        self.notices = notices
        self.metrics = metrics
        self.topic = settings.gmail_push_topic
        self.per_second = settings.gmail_watch_renewals_per_minute / 60
        self.every = notices.sweep_every
        self._allowance = 1.0
        self._allowance_at = time.monotonic()
        self._sweeper = Background("mailbox-sweep")
        self._tasks: set[asyncio.Task[Renewal | None]] = set()
        self._purged_at = 0.0
        feed.subscribe(self._on_change)

    # ------------------------------------------------------------------ connects

    def _on_change(self, kind: Kind, identifier: str | None) -> None:
        if kind != "account" or identifier is None:
            return
        try:
            task = asyncio.get_running_loop().create_task(self.account_changed(identifier))
        except RuntimeError:
            return  # no loop (a notification while shutting down): the sweep catches up
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def account_changed(self, account_id: str) -> Renewal | None:
        """An account was connected, reconnected, revoked or deleted: watch it if it needs one."""
        now = utcnow()
        try:
            async with self.database.transaction() as session:
                watches = MailboxWatchRepository(session)
                await watches.add_missing(now, 1, account_id)
                await watches.reopen(now, account_id)
            renewed = await self.renew([account_id], due_only=True)
        except Exception:
            log.warning("watching a newly connected account failed; the sweep will retry",
                        exc_info=True)  # fmt: skip
            return None
        return renewed[0] if renewed else None

    # ------------------------------------------------------------------ renewals

    async def renew(self, account_ids: list[str] | None, *, due_only: bool) -> list[Renewal]:
        """Call users.watch for these accounts (None: those due), claimed so no other
        replica does it at the same time."""
        now = utcnow()
        async with self.database.transaction() as session:
            watches = MailboxWatchRepository(session)
            if account_ids is None:
                claimed = await watches.renewals_due(now, self._budget())
            else:
                claimed = await watches.claim(account_ids, now, due_only=due_only)
            for watch in claimed:
                watch.renew_at = now + RENEWAL_LEASE
                await watches.save(watch)
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(watch: MailboxWatch) -> Renewal:
            async with gate:
                try:
                    return await self._renew(watch.account_id)
                except Exception:
                    # The claim's lease runs out and the next sweep tries again.
                    log.warning("renewing a watch failed", exc_info=True)
                    return Renewal(watch.account_id, "failed", error="internal_error")

        return list(await asyncio.gather(*(one(watch) for watch in claimed)))

    async def renew_paced(self, account_ids: list[str]) -> list[Renewal]:
        """Renew these watches now, whenever due, at the configured rate (operators)."""
        done: list[Renewal] = []
        position = 0
        while position < len(account_ids):
            budget = self._budget()
            if budget == 0:
                await asyncio.sleep(1 / self.per_second)
                continue
            chunk = account_ids[position : position + budget]
            done += await self.renew(chunk, due_only=False)
            position += len(chunk)
        return done

    def _budget(self) -> int:
        """Renewals this sweep may start: the rate, with a burst of one sweep's worth."""
        now = time.monotonic()
        burst = max(1.0, self.per_second * self.every)
        self._allowance = min(burst, self._allowance + (now - self._allowance_at) * self.per_second)
        self._allowance_at = now
        budget = int(self._allowance)
        self._allowance -= budget
        return budget

    async def _renew(self, account_id: str) -> Renewal:
        async with self.database.transaction() as session:
            account = await AccountRepository(session).get(account_id)
            if account is None:
                await MailboxWatchRepository(session).delete(account_id)
                return Renewal(account_id, "deleted")
            if account.status != AccountStatus.ACTIVE:
                await MailboxWatchRepository(session).stop(account_id, utcnow())
                return Renewal(account_id, "revoked")
        try:
            calls = await self.changes.account(account.subject, None)
            answer = await self.changes.call(
                calls, "watch", lambda token: self.gmail.watch(token, topic=self.topic)
            )
        except ReauthorizationRequired:
            self.metrics.gmail_watch_calls.labels("watch", "revoked").inc()
            return Renewal(account_id, "revoked")  # the grant is dead: its watch is stopped
        except AccountNotFound:
            return Renewal(account_id, "deleted")
        except BrokerError as error:
            return await self._failed(account_id, error)
        now = utcnow()
        async with self.database.transaction() as session:
            watches = MailboxWatchRepository(session)
            watch = await watches.get(account_id, for_update=True)
            if watch is None or watch.status == WatchStatus.STOPPED:
                return Renewal(account_id, "revoked")
            if watch.history_id is None:
                # The first watch: consumers start from here; the fallback checks after it.
                watch.history_id = answer.history_id
                watch.heard_at = now
            watch.status = WatchStatus.ACTIVE
            watch.expires_at = answer.expiration
            watch.renew_at = next_renewal(account_id, now)
            watch.failures = 0
            watch.last_error = None
            watch.updated_at = now
            await watches.save(watch)
        self.metrics.gmail_watch_calls.labels("watch", "ok").inc()
        return Renewal(account_id, "ok", expires_at=answer.expiration)

    async def _failed(self, account_id: str, error: BrokerError) -> Renewal:
        self.metrics.gmail_watch_calls.labels("watch", "failed").inc()
        reason = str(error.extensions.get("gmail_reason") or "")
        summary = f"{error.code} {reason}".strip()
        now = utcnow()
        async with self.database.transaction() as session:
            watches = MailboxWatchRepository(session)
            watch = await watches.get(account_id, for_update=True)
            if watch is not None:
                watch.failures += 1
                wait = RETRY_AFTER[min(watch.failures, len(RETRY_AFTER)) - 1]
                watch.renew_at = now + timedelta(seconds=wait)
                watch.last_error = summary[:200]
                watch.updated_at = now
                await watches.save(watch)
        log.warning("users.watch failed for account %s (%s); retrying later", account_id, summary)
        return Renewal(account_id, "failed", error=summary)

    # ------------------------------------------------------------------ deletion

    async def stop_watch(self, subject: str) -> bool:
        """users.stop for an account about to be deleted; False if Gmail did not confirm."""

        async def call() -> None:
            calls = await self.changes.account(subject, None)
            await self.changes.call(calls, "stop", self.gmail.stop)

        try:
            await asyncio.wait_for(call(), timeout=STOP_TIMEOUT)
        except (BrokerError, TimeoutError) as error:
            self.metrics.gmail_watch_calls.labels("stop", "failed").inc()
            log.warning("users.stop failed (%s); the watch ends within 7 days",
                        getattr(error, "code", "timeout"))  # fmt: skip
            return False
        self.metrics.gmail_watch_calls.labels("stop", "ok").inc()
        return True

    # ------------------------------------------------------------------ the sweep

    async def sweep(self) -> SweepReport:
        async with leadership(self.database, LEADER_LOCK) as leader:
            if not leader:
                return SweepReport(False, Counter(), Counter())
            now = utcnow()
            async with self.database.transaction() as session:
                watches = MailboxWatchRepository(session)
                await watches.add_missing(now, BACKFILL)
                await watches.reopen(now)
            renewals: Counter[str] = Counter()
            renewals.update(r.outcome for r in await self.renew(None, due_only=True))
            checks = await self.notices.check_quiet()
            if time.monotonic() - self._purged_at > 600:
                async with self.database.transaction() as session:
                    await PushReceiptRepository(session).purge(now - RECEIPTS_KEPT)
                self._purged_at = time.monotonic()
        if renewals or checks:
            log.info("mailbox sweep: renewals %s, fallback checks %s", dict(renewals), dict(checks))
        return SweepReport(True, renewals, checks)

    def start(self) -> None:
        self._sweeper.start(self._run())

    async def stop_background(self) -> None:
        await self._sweeper.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.sweep()
            except Exception:
                log.warning("mailbox sweep failed; next in %ss", self.every, exc_info=True)

    # ------------------------------------------------------------------ operators

    async def listing(self) -> list[tuple[MailboxWatch, str | None]]:
        return await watch_listing(self.database)

    async def counts(self) -> dict[str, int]:
        async with self.database.transaction() as session:
            return await MailboxWatchRepository(session).counts(utcnow() + timedelta(days=1))

    async def resolve(self, reference: str) -> str:
        async with self.database.transaction() as session:
            account = await AccountRepository(session).resolve(PROVIDER, reference)
        if account is None:
            raise AccountNotFound()
        return account.id
