"""Message details: Gmail's message resources for a listing, or for one message, at Gmail's pace.

A listing's ids are fetched with Gmail batch requests of `TOKEN_BROKER_GMAIL_BATCH_SIZE`
(50 by default: Google advises against more) in listing order. Every batch first
reserves its units from the user's quota (`services/gmail_quota.py`) and holds
its places among the user's calls in progress, so concurrent listings of one user
share the user's rate. Two batches are kept going at once: while one is on the
wire, the next waits for its quota, so the rate, not the round trips, sets the pace.

Per part of a batch:
- a message: handed on, unchanged;
- 404: the message was deleted between list and get: reported, never fatal;
- rate limited, 5xx or garbled: retried alone (`messages.get`) with backoff within
  the Gmail budget, still drawing quota; if that runs out, reported;
- 401: the token is refreshed once (for the whole fetch) and the part retried;
- any other 4xx: reported with Gmail's reason.
A whole batch that fails (timeouts, 5xx, 429) is retried with the same backoff;
past the budget the fetch fails as a listing does.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import SecretStr

from token_broker.errors import MessageNotFound, ReauthorizationRequired, UpstreamRateLimited
from token_broker.google.failures import problem_for
from token_broker.google.gmail import GmailError, GmailUnauthorized
from token_broker.google.gmail_details import (
    GmailMessageNotFound,
    GmailMessages,
    MessageFormat,
    PartFailure,
)
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.retry import RetriesExhausted, TransientError, retrying
from token_broker.services.gmail_quota import GmailQuota, QuotaWaitTooLong
from token_broker.services.listing import TOKEN_MIN_TTL, ListingService
from token_broker.settings import Settings

T = TypeVar("T")
BATCHES_AHEAD = 2
NOT_FETCHED_KEPT = 10_000  # reported by id; past this only counted (memory stays bounded)


@dataclass(frozen=True)
class DetailsQuery:
    message_format: MessageFormat
    metadata_headers: list[str] = field(default_factory=list)


@dataclass
class DetailsProgress:
    fetched: int = 0
    batches: int = 0
    retries: int = 0
    not_fetched_count: int = 0
    not_fetched: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "fetched": self.fetched,
            "batches": self.batches,
            "not_fetched_count": self.not_fetched_count,
            "not_fetched": self.not_fetched,
        }


class AccountCalls:
    """One account's token for a run of Gmail calls, refreshed at most once when Gmail says 401."""

    def __init__(
        self, service: MessageDetailsService, reference: str, client_id: str | None,
        *, account_id: str, email: str | None, token: SecretStr,
    ) -> None:  # fmt: skip
        self.service = service
        self.reference = reference
        self.client_id = client_id
        self.account_id = account_id
        self.email = email
        self.token = token
        self._refreshed = False
        self._refresh: asyncio.Task[SecretStr] | None = None

    async def call(self, attempt: Callable[[SecretStr], Awaitable[T]]) -> T:
        token = self.token
        try:
            return await attempt(token)
        except GmailUnauthorized:
            await self.unauthorized(token)
        try:
            return await attempt(self.token)
        except GmailUnauthorized:
            raise await self._reauthorization() from None

    async def unauthorized(self, token: SecretStr) -> None:
        """Gmail refused `token`: refresh it (once), unless that already happened."""
        if self.token is not token:
            return  # another call refreshed it meanwhile
        if self._refreshed:
            raise await self._reauthorization()
        await self._refreshed_token()

    async def _refreshed_token(self) -> None:
        # Concurrent batches that all got 401 share one forced refresh.
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._force_refresh())
        self.token = await asyncio.shield(self._refresh)
        self._refreshed = True

    async def _force_refresh(self) -> SecretStr:
        issued = await self.service.listing.tokens.access_token(
            self.reference, min_ttl=TOKEN_MIN_TTL, force_refresh=True, client_id=self.client_id
        )
        return issued.token.access_token

    async def _reauthorization(self) -> ReauthorizationRequired:
        return ReauthorizationRequired(
            "Gmail refused a freshly refreshed token; the user must reconnect.",
            authorization_url=self.service.listing.links.url(
                account_id=self.account_id, login_hint=self.email, client_id=self.client_id
            ),
        )


class DetailsFetch:
    """The details of one listing's messages, in order; `progress` says how far it got."""

    def __init__(self, service: MessageDetailsService, account: AccountCalls, query: DetailsQuery):
        self.service = service
        self.account = account
        self.query = query
        self.progress = DetailsProgress()

    async def messages(
        self, pages: AsyncIterator[list[dict[str, str]]]
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Each batch's messages, in listing order, for the ids `pages` yields."""
        size = self.service.batch_size
        pending: deque[asyncio.Task[list[dict[str, Any]]]] = deque()
        chunk: list[dict[str, str]] = []
        try:
            async for page in pages:
                for reference in page:
                    chunk.append(reference)
                    if len(chunk) == size:
                        pending.append(asyncio.ensure_future(self._batch(chunk)))
                        chunk = []
                        while len(pending) >= BATCHES_AHEAD:
                            yield await pending.popleft()
            if chunk:
                pending.append(asyncio.ensure_future(self._batch(chunk)))
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:
                # The consumer went away (or a batch failed): stop fetching now.
                task.cancel()
                task.add_done_callback(_retrieve)

    async def _batch(self, references: list[dict[str, str]]) -> list[dict[str, Any]]:
        service = self.service
        ids = [reference["id"] for reference in references]
        used: list[SecretStr] = []

        def send(token: SecretStr) -> Awaitable[list[dict[str, Any] | PartFailure]]:
            used.append(token)
            return self._send_batch(token, ids)

        try:
            results = await self.account.call(send)
        except (RetriesExhausted, GmailError) as error:
            raise problem_for(error, "gmail") from None
        self.progress.batches += 1
        service.metrics.gmail_batches.inc()
        if any(isinstance(r, PartFailure) and r.status == 401 for r in results):
            await self.account.unauthorized(used[-1])
        retried: dict[int, asyncio.Task[dict[str, Any] | PartFailure]] = {}
        for index, result in enumerate(results):
            if isinstance(result, PartFailure) and (result.transient or result.status == 401):
                retried[index] = asyncio.ensure_future(self._alone(ids[index], result))
        try:
            for index, task in retried.items():
                results[index] = await task
        finally:
            for task in retried.values():
                task.cancel()
                task.add_done_callback(_retrieve)
        messages = []
        for reference, result in zip(references, results, strict=True):
            if isinstance(result, PartFailure):
                self._not_fetched(reference, result)
            else:
                messages.append(result)
        self.progress.fetched += len(messages)
        service.metrics.gmail_messages_fetched.labels("ok").inc(len(messages))
        return messages

    async def _send_batch(
        self, token: SecretStr, ids: list[str]
    ) -> list[dict[str, Any] | PartFailure]:
        service = self.service

        async def attempt() -> list[dict[str, Any] | PartFailure]:
            async with service.quota.call(self.account.account_id, "messages.get", len(ids)):
                try:
                    return await service.gmail.batch_get(
                        token, ids, message_format=self.query.message_format,
                        metadata_headers=self.query.metadata_headers,
                    )  # fmt: skip
                except UpstreamProtocolError as error:
                    raise TransientError(str(error), kind="malformed") from None

        return await service.with_backoff(attempt, self.progress)

    async def _alone(self, message_id: str, failure: PartFailure) -> dict[str, Any] | PartFailure:
        """A part that failed in its batch, retried on its own with backoff (a 401 after
        the one refresh)."""
        service = self.service
        if failure.transient:
            # The batch's answer counts as the first attempt: wait as the backoff says.
            self.progress.retries += 1
            service.metrics.gmail_retries.labels(failure.kind).inc()
            await service.sleep(service.backoff.wait(1, failure.retry_after, service.rng))
        try:
            return await self.account.call(
                lambda token: service.fetch_one(
                    self.account.account_id, token, message_id, self.query, self.progress
                )
            )
        except GmailMessageNotFound:
            return PartFailure(404, "notFound")
        except RetriesExhausted as error:
            last = error.last
            return PartFailure(429 if last.kind == "rate_limited" else 503, last.kind)
        except GmailError as error:
            return PartFailure(error.status, error.reason)

    def _not_fetched(self, reference: dict[str, str], failure: PartFailure) -> None:
        progress = self.progress
        progress.not_fetched_count += 1
        outcome = "not_found" if failure.status == 404 else "failed"
        self.service.metrics.gmail_messages_fetched.labels(outcome).inc()
        if len(progress.not_fetched) < NOT_FETCHED_KEPT:
            progress.not_fetched.append(
                {"id": reference["id"], "threadId": reference.get("threadId", ""),
                 "status": failure.status, "reason": failure.reason}
            )  # fmt: skip


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class MessageDetailsService:
    def __init__(
        self,
        *,
        gmail: GmailMessages,
        quota: GmailQuota,
        listing: ListingService,
        settings: Settings,
    ) -> None:
        self.gmail = gmail
        self.quota = quota
        self.listing = listing
        self.metrics = listing.metrics
        self.backoff = listing.backoff
        self.batch_size = settings.gmail_batch_size
        self.json_max_messages = settings.gmail_details_json_max_messages
        self.rng = random.Random()  # noqa: S311  (jitter, not secrecy)

    @property
    def sleep(self) -> Callable[[float], Awaitable[None]]:
        return self.listing.sleep

    def fetch(self, account: AccountCalls, query: DetailsQuery) -> DetailsFetch:
        return DetailsFetch(self, account, query)

    async def one(
        self,
        reference: str,
        message_id: str,
        query: DetailsQuery,
        client_id: str | None,
        *,
        accepted_scopes: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """`messages.get` for one message of the account (GET .../messages/{id})."""
        tokens = self.listing.tokens
        issued = await tokens.access_token(
            reference, min_ttl=TOKEN_MIN_TTL, force_refresh=False, client_id=client_id
        )
        tokens.scope_upgrades.require_any(issued.token, accepted_scopes, client_id)
        account = AccountCalls(
            self, reference, client_id, account_id=issued.token.account_id,
            email=issued.token.email, token=issued.token.access_token,
        )  # fmt: skip
        progress = DetailsProgress()
        try:
            message = await account.call(
                lambda token: self.fetch_one(
                    account.account_id, token, message_id, query, progress,
                    max_quota_wait=self.backoff.budget,
                )
            )  # fmt: skip
        except GmailMessageNotFound:
            self.metrics.gmail_messages_fetched.labels("not_found").inc()
            raise MessageNotFound() from None
        except QuotaWaitTooLong as error:
            raise UpstreamRateLimited(
                "This account's Gmail quota is spoken for; retry after retry_after seconds.",
                retry_after=max(1, math.ceil(error.wait)),
            ) from None
        except (RetriesExhausted, GmailError) as error:
            self.metrics.gmail_messages_fetched.labels("failed").inc()
            raise problem_for(error, "gmail") from None
        self.metrics.gmail_messages_fetched.labels("ok").inc()
        return message

    async def fetch_one(
        self, account_id: str, token: SecretStr, message_id: str, query: DetailsQuery,
        progress: DetailsProgress, *, max_quota_wait: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        async def attempt() -> dict[str, Any]:
            async with self.quota.call(account_id, "messages.get", max_wait=max_quota_wait):
                try:
                    return await self.gmail.get(
                        token, message_id, message_format=query.message_format,
                        metadata_headers=query.metadata_headers,
                    )  # fmt: skip
                except UpstreamProtocolError as error:
                    raise TransientError(str(error), kind="malformed") from None

        return await self.with_backoff(attempt, progress)

    async def with_backoff(
        self, attempt: Callable[[], Awaitable[T]], progress: DetailsProgress
    ) -> T:
        def retried(error: TransientError, wait: float) -> None:
            progress.retries += 1
            self.metrics.gmail_retries.labels(error.kind).inc()

        return await retrying(
            attempt, self.backoff, sleep=self.sleep, rng=self.rng, on_retry=retried
        )
