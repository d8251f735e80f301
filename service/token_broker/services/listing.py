"""Complete Gmail listings: every page followed, one request at a time, resilient.

Pages of 500 (Gmail's maximum; the default 100 costs five times the round trips).
Each page spends 5 units of the user's Gmail quota (`services/gmail_quota.py`).
A 401 refreshes the token once and retries that page; rate limits, 5xx and timeouts
back off exponentially with jitter, honouring Retry-After, within a per-page budget.

A JSON answer must be complete before it is sent, so it is held: each page encoded
as it arrives (about 50 bytes a message, not the 450 of its dicts), and at most
TOKEN_BROKER_JSON_LISTING_MAX_MESSAGES of them (`too_many_for_json` past that points
to NDJSON, which streams any number in flat memory).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import SecretStr

from token_broker.errors import (
    BrokerError,
    ReauthorizationRequired,
    ShuttingDown,
    TooManyForJson,
)
from token_broker.google.failures import problem_for
from token_broker.google.gmail import GmailClient, GmailError, GmailUnauthorized, MessagePage
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.drain import Drain
from token_broker.kit.retry import Backoff, RetriesExhausted, TransientError, retrying
from token_broker.observability.metrics import Metrics
from token_broker.services.audit import Action, AuditBuffer
from token_broker.services.gmail_quota import GmailQuota
from token_broker.services.reauthorization import ReauthorizationLinks
from token_broker.services.tokens import TokenService
from token_broker.settings import Settings

log = logging.getLogger("token_broker.listing")

PAGE_SIZE = 500
TOKEN_MIN_TTL = 300


@dataclass(frozen=True)
class ListingQuery:
    q: str | None = None
    label_ids: list[str] = field(default_factory=list)
    include_spam_trash: bool = False
    limit: int | None = None


@dataclass
class Progress:
    pages: int = 0
    count: int = 0
    result_size_estimate: int = 0
    retries: int = 0


class Listing:
    """One listing in progress: iterate `pages()`; `progress` says how far it got."""

    def __init__(
        self,
        service: ListingService,
        reference: str,
        query: ListingQuery,
        client_id: str | None,
        accepted_scopes: frozenset[str] = frozenset(),
    ) -> None:
        self.service = service
        self.reference = reference
        self.query = query
        self.client_id = client_id
        self.accepted_scopes = accepted_scopes  # one of them must be granted
        self.progress = Progress()
        self.audit_detail: dict[str, object] = {}  # what a details fetch adds to the audit
        self._token: SecretStr | None = None
        self._account_id: str | None = None
        self._email: str | None = None

    async def first_page(self) -> MessagePage:
        """Fetch the first page: failures here can still be a plain problem response."""
        try:
            issued = await self.service.tokens.access_token(
                self.reference,
                min_ttl=TOKEN_MIN_TTL,
                force_refresh=False,
                client_id=self.client_id,
            )
            self._account_id = issued.token.account_id
            # A grant without a scope that can list is 403 with the link that adds one,
            # before Gmail is asked (services/scope_upgrades.py).
            self.service.tokens.scope_upgrades.require_any(
                issued.token, self.accepted_scopes, self.client_id
            )
            self._token = issued.token.access_token
            self._email = issued.token.email
            return await self._page(None)
        except BrokerError as error:
            self.audit(error.code)
            raise

    async def collect(
        self, first: MessagePage, encode: Callable[[list[dict[str, str]]], bytes]
    ) -> list[bytes]:
        """Every page of the listing, each as `encode` made it (the JSON answer), audited;
        `TooManyForJson` past the JSON cap."""
        most = self.service.json_max_messages
        encoded: list[bytes] = []
        try:
            async for page in self.pages(first):
                if self.progress.count > most:
                    raise TooManyForJson(max_messages=most)
                if page:
                    encoded.append(encode(page))
        except BrokerError as error:
            self.audit(error.code)
            raise
        self.audit("ok")
        return encoded

    async def pages(self, first: MessagePage) -> AsyncIterator[list[dict[str, str]]]:
        """Yield each page's messages, `first` included, until the end or the limit.

        The next page is requested as soon as its token is known, before this page is
        handed on: the caller's work on a page overlaps the wait for the next one, and
        still only one request per listing is ever in flight.
        """
        page = first
        self.progress.result_size_estimate = page.result_size_estimate
        limit = self.query.limit
        upcoming: asyncio.Task[MessagePage] | None = None
        try:
            while True:
                messages = page.messages
                if limit is not None:
                    messages = messages[: max(0, limit - self.progress.count)]
                self.progress.count += len(messages)
                done = limit is not None and self.progress.count >= limit
                more = page.next_page_token is not None and not done
                if more and not self.service.drain.draining:
                    upcoming = asyncio.ensure_future(self._page(page.next_page_token))
                yield messages
                if not more:
                    return
                if upcoming is None:
                    raise ShuttingDown()
                page = await upcoming
                upcoming = None
        finally:
            if upcoming is not None:
                # The consumer went away (or failed): stop paging now. Not awaited: this
                # may run inside the consumer's own cancellation.
                upcoming.cancel()
                upcoming.add_done_callback(_retrieve)

    @property
    def account(self) -> tuple[str, str | None, SecretStr]:
        """The account's id, email and access token, once `first_page` has run."""
        assert self._account_id is not None
        assert self._token is not None
        return self._account_id, self._email, self._token

    def audit(self, outcome: str) -> None:
        self.service.audit.record(
            Action.MESSAGES_LISTED,
            outcome,
            client_id=self.client_id,
            account_id=self._account_id,
            detail={
                "pages": self.progress.pages,
                "count": self.progress.count,
                "retries": self.progress.retries,
                **self.audit_detail,
            },
        )

    async def _page(self, page_token: str | None) -> MessagePage:
        try:
            page = await self._page_with_one_refresh(page_token)
        except (RetriesExhausted, GmailError) as error:
            raise problem_for(error, "gmail") from None
        self.progress.pages += 1
        self.service.metrics.gmail_pages.inc()
        return page

    async def _page_with_one_refresh(self, page_token: str | None) -> MessagePage:
        try:
            return await self._page_with_backoff(page_token)
        except GmailUnauthorized:
            # Expired or revoked mid-listing: one forced refresh, then one more try.
            issued = await self.service.tokens.access_token(
                self.reference, min_ttl=TOKEN_MIN_TTL, force_refresh=True, client_id=self.client_id
            )
            self._token = issued.token.access_token
        try:
            return await self._page_with_backoff(page_token)
        except GmailUnauthorized:
            raise ReauthorizationRequired(
                "Gmail refused a freshly refreshed token; the user must reconnect.",
                authorization_url=self.service.links.url(
                    account_id=self._account_id, login_hint=self._email, client_id=self.client_id
                ),
            ) from None

    async def _page_with_backoff(self, page_token: str | None) -> MessagePage:
        assert self._token is not None
        assert self._account_id is not None
        token, account_id = self._token, self._account_id

        async def attempt() -> MessagePage:
            async with self.service.quota.call(account_id, "messages.list"):
                try:
                    return await self.service.gmail.list_messages(
                        token,
                        q=self.query.q,
                        label_ids=self.query.label_ids,
                        include_spam_trash=self.query.include_spam_trash,
                        page_token=page_token,
                        max_results=PAGE_SIZE,
                    )
                except UpstreamProtocolError as error:
                    raise TransientError(str(error), kind="malformed") from None

        def retried(error: TransientError, wait: float) -> None:
            self.progress.retries += 1
            self.service.metrics.gmail_retries.labels(error.kind).inc()

        return await retrying(
            attempt, self.service.backoff, sleep=self.service.sleep, on_retry=retried
        )


def _retrieve(task: asyncio.Task[MessagePage]) -> None:
    if not task.cancelled():
        task.exception()


class ListingService:
    def __init__(
        self,
        *,
        gmail: GmailClient,
        tokens: TokenService,
        links: ReauthorizationLinks,
        settings: Settings,
        audit: AuditBuffer,
        metrics: Metrics,
        drain: Drain,
        quota: GmailQuota,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.gmail = gmail
        self.quota = quota
        self.tokens = tokens
        self.links = links
        self.audit = audit
        self.metrics = metrics
        self.drain = drain
        self.sleep = sleep
        self.json_max_messages = settings.json_listing_max_messages
        self.backoff = Backoff(
            attempts=settings.gmail_attempts,
            budget=settings.gmail_budget_seconds,
            initial=settings.gmail_backoff_seconds,
            maximum=32.0,
            jitter=settings.gmail_backoff_seconds,
        )

    def listing(
        self,
        reference: str,
        query: ListingQuery,
        client_id: str | None,
        *,
        accepted_scopes: frozenset[str] = frozenset(),
    ) -> Listing:
        """A listing; `accepted_scopes`: the grant must hold one (`scopes.gmail_scopes_for`)."""
        return Listing(self, reference, query, client_id, accepted_scopes)
