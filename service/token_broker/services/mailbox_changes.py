"""Mailbox changes since a cursor: Gmail's history, every page followed, as a list of changes.

`GET /v1/accounts/{account}/changes` without a cursor answers the starting point: a
cursor at the mailbox's current history id (`users.getProfile`, 1 unit). With one, it
follows `users.history.list` from the cursor's history id (pages of 500 records, 2
units each, from the account's Gmail quota like every Gmail call), and answers each
record's changes in order (message added, message deleted, labels added, labels
removed) and the cursor to continue from: the mailbox's current history id when the
last page was read. A cursor is opaque and tamper-evident (`kit/signed_tokens.py`,
keyed from the configured keyring), bound to its account.

A cursor Gmail no longer knows (history.list answers 404; Gmail keeps history about a
week, sometimes hours) is 410 `cursor_expired` carrying a fresh cursor, taken before the
caller lists the mailbox again, so nothing that changes meanwhile is missed (it comes
again as a change, which applies idempotently).

`probe` is the same walk, one record deep, for the fallback check of quiet watched
mailboxes (`services/mailbox_notices.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import SecretStr

from token_broker.errors import (
    BrokerError,
    CursorExpired,
    InvalidCursor,
    ShuttingDown,
    TooManyForJson,
)
from token_broker.google.failures import problem_for
from token_broker.google.gmail import GmailError
from token_broker.google.gmail_details import GmailMethod
from token_broker.google.gmail_sync import (
    GmailHistoryNotFound,
    GmailSync,
    HistoryChange,
    HistoryPage,
    HistoryType,
    Profile,
)
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.drain import Drain
from token_broker.kit.retry import RetriesExhausted, TransientError
from token_broker.kit.signed_tokens import BadSignedToken, TokenSigner
from token_broker.services.audit import Action, AuditBuffer
from token_broker.services.details import AccountCalls, DetailsProgress, MessageDetailsService
from token_broker.services.listing import TOKEN_MIN_TTL

T = TypeVar("T")
CURSOR_PURPOSE = "gmail-changes"
JSON_MAX_CHANGES = 100_000  # a JSON answer holds at most this many; NDJSON has no limit


@dataclass(frozen=True)
class ChangesQuery:
    cursor: str | None = None
    label_id: str | None = None
    history_types: tuple[HistoryType, ...] = ()


@dataclass
class ChangesProgress:
    pages: int = 0
    count: int = 0
    history_id: str = "0"  # where the next cursor starts


@dataclass(frozen=True)
class Probe:
    """What a one-record look at a mailbox's history found."""

    outcome: Literal["changed", "unchanged", "expired"]
    history_id: str


def _later(first: str, second: str) -> str:
    return first if int(first) >= int(second) else second


class ChangesRun:
    """One changes request: `start()`, then `pages()`; `cursor` once they are done."""

    def __init__(
        self, service: ChangesService, reference: str, query: ChangesQuery, client_id: str | None
    ) -> None:
        self.service = service
        self.reference = reference
        self.query = query
        self.client_id = client_id
        self.progress = ChangesProgress()
        self._account: AccountCalls | None = None
        self._start: str | None = None

    @property
    def cursor(self) -> str:
        assert self._account is not None
        return self.service.cursor(self._account.account_id, self.progress.history_id)

    async def start(self) -> HistoryPage | None:
        """The first page (None without a cursor: the starting point is all there is).

        Failures here are still plain problem responses.
        """
        try:
            claims = self.service.cursor_claims(self.query.cursor) if self.query.cursor else None
            self._account = await self.service.account(self.reference, self.client_id)
            if claims is None:
                profile = await self.service.profile(self._account)
                self.progress.history_id = profile.history_id
                return None
            if claims.get("a") != self._account.account_id:
                raise InvalidCursor("This cursor belongs to another account.")
            self._start = str(claims["h"])
            self.progress.history_id = self._start
            return await self._page(None)
        except BrokerError as error:
            self.audit(error.code)
            raise

    async def pages(self, first: HistoryPage | None) -> AsyncIterator[list[HistoryChange]]:
        page = first
        while page is not None:
            self.progress.count += len(page.changes)
            last = page.changes[-1].history_id if page.changes else page.history_id
            self.progress.history_id = _later(_later(page.history_id, last), self._start or "0")
            yield page.changes
            if page.next_page_token is None:
                return
            if self.service.drain.draining:
                raise ShuttingDown()
            page = await self._page(page.next_page_token)

    async def collect(self, first: HistoryPage | None) -> list[HistoryChange]:
        changes: list[HistoryChange] = []
        try:
            async for page in self.pages(first):
                changes.extend(page)
                if len(changes) > JSON_MAX_CHANGES:
                    raise TooManyForJson(
                        f"More than {JSON_MAX_CHANGES} changes since this cursor: ask with "
                        "`Accept: application/x-ndjson` to stream them.",
                        max_messages=JSON_MAX_CHANGES,
                    )
        except BrokerError as error:
            self.audit(error.code)
            raise
        self.audit("ok")
        return changes

    def audit(self, outcome: str) -> None:
        self.service.audit.record(
            Action.CHANGES_LISTED, outcome, client_id=self.client_id,
            account_id=self._account.account_id if self._account else None,
            detail={"pages": self.progress.pages, "count": self.progress.count,
                    "from_cursor": self.query.cursor is not None},
        )  # fmt: skip

    async def _page(self, page_token: str | None) -> HistoryPage:
        assert self._account is not None
        assert self._start is not None
        start = self._start
        try:
            page = await self.service.call(
                self._account, "history.list",
                lambda token: self.service.gmail.list_history(
                    token, start_history_id=start, label_id=self.query.label_id,
                    history_types=self.query.history_types, page_token=page_token,
                ),
            )  # fmt: skip
        except GmailHistoryNotFound:
            profile = await self.service.profile(self._account)
            raise CursorExpired(
                cursor=self.service.cursor(self._account.account_id, profile.history_id),
                history_id=profile.history_id,
            ) from None
        self.progress.pages += 1
        self.service.details.metrics.gmail_history_pages.inc()
        return page


class ChangesService:
    def __init__(
        self,
        *,
        gmail: GmailSync,
        details: MessageDetailsService,
        signer: TokenSigner,
        audit: AuditBuffer,
        drain: Drain,
    ) -> None:
        self.gmail = gmail
        self.details = details
        self.signer = signer
        self.audit = audit
        self.drain = drain

    def run(self, reference: str, query: ChangesQuery, client_id: str | None) -> ChangesRun:
        return ChangesRun(self, reference, query, client_id)

    # ------------------------------------------------------------------ cursors

    def cursor(self, account_id: str, history_id: str) -> str:
        return self.signer.sign(CURSOR_PURPOSE, {"a": account_id, "h": history_id})

    def cursor_claims(self, cursor: str) -> dict[str, object]:
        try:
            claims = self.signer.verify(CURSOR_PURPOSE, cursor)
        except BadSignedToken:
            raise InvalidCursor(
                "cursor is not one this API returned (or was altered); start again without it."
            ) from None
        history_id = claims.get("h")
        if not isinstance(claims.get("a"), str) or not (
            isinstance(history_id, str) and history_id.isdigit()
        ):
            raise InvalidCursor()
        return claims

    # ------------------------------------------------------------------ Gmail calls

    async def account(self, reference: str, client_id: str | None) -> AccountCalls:
        issued = await self.details.listing.tokens.access_token(
            reference, min_ttl=TOKEN_MIN_TTL, force_refresh=False, client_id=client_id
        )
        return AccountCalls(
            self.details, reference, client_id, account_id=issued.token.account_id,
            email=issued.token.email, token=issued.token.access_token,
        )  # fmt: skip

    async def profile(self, account: AccountCalls) -> Profile:
        return await self.call(account, "getProfile", self.gmail.profile)

    async def call(
        self,
        account: AccountCalls,
        method: GmailMethod,
        request: Callable[[SecretStr], Awaitable[T]],
    ) -> T:
        """One Gmail call for the account: its quota, backoff, one refresh on 401; failures
        as problems (GmailHistoryNotFound is left to the caller)."""
        quota, details = self.details.quota, self.details

        def attempt_with(token: SecretStr) -> Awaitable[T]:
            async def attempt() -> T:
                async with quota.call(account.account_id, method):
                    try:
                        return await request(token)
                    except UpstreamProtocolError as error:
                        raise TransientError(str(error), kind="malformed") from None

            return details.with_backoff(attempt, DetailsProgress())

        try:
            return await account.call(attempt_with)
        except (RetriesExhausted, GmailError) as error:
            raise problem_for(error, "gmail") from None

    async def probe(self, reference: str, since: str) -> Probe:
        """Has the mailbox changed after history id `since`? One record deep (2 units)."""
        account = await self.account(reference, None)
        try:
            page = await self.call(
                account, "history.list",
                lambda token: self.gmail.list_history(
                    token, start_history_id=since, max_results=1
                ),
            )  # fmt: skip
        except GmailHistoryNotFound:
            profile = await self.profile(account)
            return Probe("expired", profile.history_id)
        if page.records or page.changes:
            return Probe("changed", page.history_id)
        return Probe("unchanged", _later(page.history_id, since))
