"""One refresh per account at a time, fleet-wide: a lease on the account's row.

A replica that must refresh an account takes its lease in a short transaction: it
locks the row (for milliseconds), reads it, and either finds the work already done
(a token another replica stored that satisfies the request, or a dead grant), finds
the lease held by another replica (or a cool-down after a failed refresh), or writes
its own lease id and expiry (the database's clock plus
TOKEN_BROKER_REFRESH_LEASE_SECONDS) and commits. It then calls the provider outside
any transaction, holding no connection, and stores the result in a second short
transaction that checks the lease is still its own and clears it.

Everyone else waits without a connection: woken by the NOTIFY the releasing
transaction sends (Postgres), by a bounded poll (`POLL_SECONDS`), or by the lease's
expiry. A holder that dies (killed, cut off) holds nothing but the lease, which
expires, and a waiter takes over.

A holder stops calling the provider `LEASE_MARGIN_SECONDS` before its lease expires,
so a lease never runs out while its holder may still present the refresh token: two
replicas never present the same one at once (a provider that rotates refresh tokens
kills the grant when an old one comes back).

Each replica runs at most TOKEN_BROKER_REFRESH_CONCURRENCY leased refreshes at once
(`slots`); a storm over many accounts queues for them instead of failing. Only the
holder of a slot touches the database, so the connection pool is never the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import AccountNotFound, UpstreamUnavailable
from token_broker.kit.retry import RetriesExhausted
from token_broker.store.change_feed import CHANNEL, ChangeFeed, payload
from token_broker.store.database import Database
from token_broker.store.models import Account
from token_broker.store.repositories import AccountRepository, ChangeNotices

log = logging.getLogger("token_broker.leases")

POLL_SECONDS = 1.0
LEASE_MARGIN_SECONDS = 2.0

T = TypeVar("T")


@dataclass(frozen=True)
class Lease:
    """This replica's lease on an account, and the row as it was read when taken."""

    id: str
    account: Account
    taken_at: float  # time.monotonic()
    seconds: float

    def call_budget(self) -> float:
        """Seconds left for calling the provider: the lease, less a margin, less what passed."""
        elapsed = time.monotonic() - self.taken_at
        return max(0.0, self.seconds - LEASE_MARGIN_SECONDS - elapsed)


@dataclass(frozen=True)
class HeldElsewhere:
    seconds_left: float


@dataclass(frozen=True)
class CoolingDown:
    seconds_left: float


@dataclass(frozen=True)
class Settled(Generic[T]):
    """The work is done already; `outcome` is what `settled` said about the row."""

    outcome: T


Judged = Settled[T] | HeldElsewhere | CoolingDown


def _judge(
    account: Account, now: datetime, settled: Callable[[Account], T | None]
) -> Judged[T] | None:
    outcome = settled(account)
    if outcome is not None:
        return Settled(outcome)
    until = account.refresh_lease_until
    if until is not None and until > now:
        left = (until - now).total_seconds()
        return HeldElsewhere(left) if account.refresh_lease_id else CoolingDown(left)
    return None


class RefreshLeases:
    def __init__(
        self,
        database: Database,
        changes: ChangeFeed,
        *,
        lease_seconds: float,
        cooldown_seconds: float,
        concurrency: int,
    ) -> None:
        self.database = database
        self.lease_seconds = lease_seconds
        self.cooldown_seconds = cooldown_seconds
        self.slots = asyncio.Semaphore(concurrency)
        self._watchers: dict[str, set[asyncio.Event]] = {}
        changes.subscribe(self._on_change)

    async def single_flight(
        self,
        account_id: str,
        settled: Callable[[Account], T | None],
        refresh: Callable[[Lease], Awaitable[T]],
    ) -> T:
        """`settled(row)` if it says the work is done; else `refresh(lease)` under the
        account's lease, waiting (without a connection) while another replica holds it.

        `refresh` stores its result with `settle` in the transaction that records it. If
        it raises, the lease is released: with a cool-down after `RetriesExhausted` (the
        provider is failing: other replicas' callers fail fast too), else at once.
        """
        released = self._watch(account_id)
        try:
            waited = False
            while True:
                released.clear()
                judged = await self._peek(account_id, settled) if waited else None
                if judged is None:
                    async with self.slots:
                        claimed = await self._claim(account_id, settled)
                        if isinstance(claimed, Lease):
                            return await self._hold(claimed, refresh)
                    judged = claimed
                if isinstance(judged, Settled):
                    return judged.outcome
                if isinstance(judged, CoolingDown):
                    raise UpstreamUnavailable(
                        "A refresh for this account failed moments ago; retry shortly.",
                        retry_after=max(1, math.ceil(judged.seconds_left)),
                    )
                await self._wait(released, judged.seconds_left)
                waited = True
        finally:
            self._unwatch(account_id, released)

    async def settle(self, session: AsyncSession, account_id: str, lease: Lease) -> Account | None:
        """In the caller's transaction: the account, locked, with the lease cleared (and the
        release announced at commit); None if the lease is no longer this one."""
        found = await AccountRepository(session).with_clock(account_id, lock=True)
        if found is None:
            raise AccountNotFound()
        account, _ = found
        if account.refresh_lease_id != lease.id:
            log.warning(
                "refresh lease lost before its result was stored; nothing stored",
                extra={"account_id": account_id},
            )
            return None
        account.refresh_lease_id = None
        account.refresh_lease_until = None
        await ChangeNotices(session).send(CHANNEL, payload("lease", account_id))
        return account

    # ------------------------------------------------------------------ the protocol

    async def _peek(
        self, account_id: str, settled: Callable[[Account], T | None]
    ) -> Judged[T] | None:
        async with self.database.reading() as session:
            found = await AccountRepository(session).with_clock(account_id)
        if found is None:
            raise AccountNotFound()
        return _judge(*found, settled)

    async def _claim(
        self, account_id: str, settled: Callable[[Account], T | None]
    ) -> Judged[T] | Lease:
        async with self.database.transaction() as session:
            accounts = AccountRepository(session)
            found = await accounts.with_clock(account_id, lock=True)
            if found is None:
                raise AccountNotFound()
            account, now = found
            judged = _judge(account, now, settled)
            if judged is not None:
                return judged
            if account.refresh_lease_id is not None:
                log.warning(
                    "taking over an expired refresh lease (its holder stopped)",
                    extra={"account_id": account_id},
                )
            lease_id = str(uuid.uuid4())
            until = now + timedelta(seconds=self.lease_seconds)
            await accounts.set_lease(account, lease_id, until)
        return Lease(lease_id, account, time.monotonic(), self.lease_seconds)

    async def _hold(self, lease: Lease, refresh: Callable[[Lease], Awaitable[T]]) -> T:
        try:
            return await refresh(lease)
        except RetriesExhausted:
            await self._release(lease, cooldown=self.cooldown_seconds)
            raise
        except BaseException:
            await self._release(lease, cooldown=0)
            raise

    async def _release(self, lease: Lease, *, cooldown: float) -> None:
        """Give the lease up (a cool-down keeps everyone off until it ends); best effort:
        a lease that cannot be released now expires by itself."""
        account_id = lease.account.id
        try:
            async with self.database.transaction() as session:
                accounts = AccountRepository(session)
                found = await accounts.with_clock(account_id, lock=True)
                if found is None or found[0].refresh_lease_id != lease.id:
                    return
                account, now = found
                account.refresh_lease_id = None
                account.refresh_lease_until = (
                    now + timedelta(seconds=cooldown) if cooldown > 0 else None
                )
                await accounts.save(account)
                await ChangeNotices(session).send(CHANNEL, payload("lease", account_id))
        except Exception as error:
            log.warning(
                "refresh lease not released (%s); it expires within %ss",
                type(error).__name__, self.lease_seconds, extra={"account_id": account_id},
            )  # fmt: skip

    # ------------------------------------------------------------------ waiting

    async def _wait(self, released: asyncio.Event, seconds_left: float) -> None:
        timeout = min(POLL_SECONDS, max(0.05, seconds_left + 0.05))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), timeout)

    def _watch(self, account_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(account_id, set()).add(event)
        return event

    def _unwatch(self, account_id: str, event: asyncio.Event) -> None:
        watching = self._watchers.get(account_id)
        if watching is not None:
            watching.discard(event)
            if not watching:
                del self._watchers[account_id]

    def _on_change(self, kind: str, identifier: str | None) -> None:
        if kind not in ("lease", "account"):
            return
        if identifier is None:  # the feed reconnected: anything may have been missed
            watching = [event for events in self._watchers.values() for event in events]
        else:
            watching = list(self._watchers.get(identifier, ()))
        for event in watching:
            event.set()
