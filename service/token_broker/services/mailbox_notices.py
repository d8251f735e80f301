"""`mailbox.changed` webhooks: pushes coalesced per account, and the fallback for quiet mailboxes.

A push for a watched account that says something newer than its consumers were last
told opens a coalescing window of `TOKEN_BROKER_GMAIL_PUSH_COALESCE_SECONDS`; pushes
inside it only raise the pending history id. When the window closes, one signed
`mailbox.changed` webhook `{account, history_id}` goes into the outbox (the same
transaction records what was told), so a burst of changes costs consumers one webhook
and one changes request per window. Windows are rows (`mailbox_watches`): any replica
closes any window, each exactly once; a replica that opened one closes it on time,
the others look every second.

Gmail's notifications can be delayed or dropped, so a watched mailbox that has been
quiet (no push, no check) for `TOKEN_BROKER_GMAIL_PUSH_FALLBACK_SECONDS` is checked by
the leading replica (`services/mailbox_watches.py` runs the sweep): one history.list
record after the last history id sent (2 units). If there is one, the webhook goes
out at once (`trigger: fallback`); history gone (404) also sends one, so consumers
find their cursor expired and list again. Since sweeps run every tenth of that time
and look two tenths early, a change nobody pushed is found within the configured
time of the last thing the broker heard, and so of the change; the webhook follows
as soon as the outbox sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Literal

from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import BrokerError
from token_broker.kit.background import Background
from token_broker.kit.clock import utcnow
from token_broker.observability.metrics import Metrics
from token_broker.services.mailbox_changes import ChangesService, Probe
from token_broker.services.webhooks import Webhooks
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.mailbox_watches import MailboxWatchRepository
from token_broker.store.models import Account, AccountStatus, MailboxWatch, WatchStatus
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.mailbox")

PushOutcome = Literal["accepted", "coalesced", "not_watched"]
POLL_SECONDS = 1.0  # how often a replica looks for windows other replicas opened
BATCH = 100
CHECKS_AT_ONCE = 8


def newest(*history_ids: str | None) -> int:
    return max((int(h) for h in history_ids if h), default=0)


class MailboxNotices:
    def __init__(
        self,
        database: Database,
        webhooks: Webhooks,
        changes: ChangesService,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.database = database
        self.webhooks = webhooks
        self.changes = changes
        self.metrics = metrics
        self.window = timedelta(seconds=settings.gmail_push_coalesce_seconds)
        self.quiet_after = settings.gmail_push_fallback_seconds
        self.sweep_every = max(0.1, min(60.0, self.quiet_after / 10))
        self._wake = asyncio.Event()
        self._closer = Background("mailbox-windows")

    # ------------------------------------------------------------------ pushes

    async def pushed(
        self, session: AsyncSession, account: Account, history_id: str, now: datetime
    ) -> PushOutcome:
        """Record a push for `account` in the caller's transaction."""
        watches = MailboxWatchRepository(session)
        watch = await watches.get(account.id, for_update=True)
        if watch is None or watch.status == WatchStatus.STOPPED:
            return "not_watched"
        if account.status != AccountStatus.ACTIVE:
            return "not_watched"
        watch.heard_at = watch.last_push_at = now
        outcome: PushOutcome = "coalesced"
        if int(history_id) > newest(watch.history_id, watch.pending_history_id):
            watch.pending_history_id = history_id
            watch.pending_trigger = "push"
            if watch.window_ends_at is None:
                watch.window_ends_at = now + self.window
                outcome = "accepted"
        watch.updated_at = now
        await watches.save(watch)
        if outcome == "coalesced":
            self.metrics.mailbox_webhooks_coalesced.inc()
        return outcome

    def window_opened(self) -> None:
        """Close the window this replica just opened when it ends, not at the next poll."""
        asyncio.get_running_loop().call_later(self.window.total_seconds(), self._wake.set)

    # ------------------------------------------------------------------ closing windows

    async def close_windows(self) -> int:
        """Send the webhook of every closed window; returns how many went out."""
        sent = 0
        while True:
            now = utcnow()
            async with self.database.transaction() as session:
                due = await MailboxWatchRepository(session).closed_windows(now, BATCH)
                for watch in due:
                    sent += await self._announce(session, watch, now)
            if sent:
                self.webhooks.wake()
            if len(due) < BATCH:
                return sent

    async def _announce(self, session: AsyncSession, watch: MailboxWatch, now: datetime) -> int:
        history_id, trigger = watch.pending_history_id, watch.pending_trigger or "push"
        watch.pending_history_id = watch.pending_trigger = None
        watch.window_ends_at = None
        watch.updated_at = now
        account = await AccountRepository(session).get(watch.account_id)
        sent = 0
        if history_id and account is not None and account.status == AccountStatus.ACTIVE:
            await self.webhooks.mailbox_changed(
                session, account, history_id=history_id, trigger=trigger
            )
            watch.history_id = str(newest(watch.history_id, history_id))
            self.metrics.mailbox_webhooks.labels(trigger).inc()
            sent = 1
        await MailboxWatchRepository(session).save(watch)
        return sent

    def start(self) -> None:
        self._closer.start(self._run())

    async def stop(self) -> None:
        await self._closer.stop()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
            self._wake.clear()
            try:
                await self.close_windows()
            except Exception:
                log.warning("closing coalescing windows failed; will retry", exc_info=True)

    # ------------------------------------------------------------------ the fallback

    async def check_quiet(self) -> Counter[str]:
        """Check every watched mailbox quiet for about the fallback time (leader only)."""
        outcomes: Counter[str] = Counter()
        now = utcnow()
        # Two ticks early: a sweep starts a tick after the last one ended, not on the dot.
        heard_before = now - timedelta(seconds=self.quiet_after - 2 * self.sweep_every)
        async with self.database.transaction() as session:
            watches = MailboxWatchRepository(session)
            quiet = await watches.quiet(heard_before, 10 * BATCH)
            for watch in quiet:  # claimed: not checked again for another fallback period
                watch.heard_at = now
                await watches.save(watch)
            targets = [(w.account_id, w.history_id) for w in quiet]
            accounts = {
                w.account_id: await AccountRepository(session).get(w.account_id) for w in quiet
            }
        gate = asyncio.Semaphore(CHECKS_AT_ONCE)

        async def check(account_id: str, since: str | None) -> None:
            async with gate:
                account = accounts.get(account_id)
                try:
                    outcome = await self._check(account, since) if account else "unchanged"
                except Exception:
                    log.warning("a fallback check failed", exc_info=True)
                    outcome = "failed"
                outcomes[outcome] += 1
                self.metrics.gmail_fallback_checks.labels(outcome).inc()

        await asyncio.gather(*(check(a, since) for a, since in targets))
        if outcomes["changed"] or outcomes["expired"]:
            self._wake.set()
        return outcomes

    async def _check(self, account: Account, since: str | None) -> str:
        if account.status != AccountStatus.ACTIVE or since is None:
            return "unchanged"
        try:
            probe = await self.changes.probe(account.subject, since)
        except BrokerError as error:
            # A dead grant is already handled (the account is revoked, its watch stopped).
            log.info("fallback check of a quiet mailbox failed (%s)", error.code)
            return "failed"
        await self._record(account.id, probe)
        return probe.outcome

    async def _record(self, account_id: str, probe: Probe) -> None:
        now = utcnow()
        async with self.database.transaction() as session:
            watches = MailboxWatchRepository(session)
            watch = await watches.get(account_id, for_update=True)
            if watch is None or watch.status == WatchStatus.STOPPED:
                return
            if probe.outcome == "unchanged":
                if watch.pending_history_id is None:
                    watch.history_id = str(newest(watch.history_id, probe.history_id))
            elif int(probe.history_id) > newest(watch.history_id, watch.pending_history_id) or (
                probe.outcome == "expired"
            ):
                watch.pending_history_id = probe.history_id
                watch.pending_trigger = "fallback"
                watch.window_ends_at = now  # nothing to coalesce with: announce at once
            watch.updated_at = now
            await watches.save(watch)
