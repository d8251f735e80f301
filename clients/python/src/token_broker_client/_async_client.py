"""`BrokerClient`: the broker's REST API for asyncio services (see `_client_settings.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from token_broker_client import _calls as calls
from token_broker_client._cache import TokenCache
from token_broker_client._calls import Call, StreamCall
from token_broker_client._client_settings import (
    DEFAULT_MIN_TTL,
    DEFAULT_TIMEOUT,
    ClientSettings,
    json_body,
    unreachable,
)
from token_broker_client._errors import BrokerError, CursorExpired, problem_from_response
from token_broker_client._models import (
    AccessToken,
    Account,
    AccountPage,
    Authorization,
    AuthorizationOutcome,
    Change,
    ChangeList,
    ChangesSummary,
    Deletion,
    DetailsSummary,
    GmailMessage,
    HistoryType,
    ListingSummary,
    MessageDetailsList,
    MessageFormat,
    MessageList,
    MessageRef,
)
from token_broker_client._retry import RetryPolicy
from token_broker_client._streams import AsyncStream

T = TypeVar("T")
Item = TypeVar("Item")
Summary = TypeVar("Summary")


class BrokerClient:
    """The broker's REST API for asyncio services.

    ```python
    async with BrokerClient("http://token-broker", api_key) as broker:
        token = await broker.access_token("alice@example.com")
    ```

    `http` lets you pass your own `httpx.AsyncClient` (proxies, transports); the
    client then leaves closing it to you.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        token_cache: TokenCache | bool = True,
        default_min_ttl: int = DEFAULT_MIN_TTL,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = ClientSettings(
            base_url, api_key, retry=retry, token_cache=token_cache,
            default_min_ttl=default_min_ttl,
        )  # fmt: skip
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:
        return f"BrokerClient({self._settings!r})"

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # Tokens

    async def access_token(
        self,
        account: str,
        *,
        min_ttl: int | None = None,
        force_refresh: bool = False,
        scopes: Sequence[str] = (),
    ) -> AccessToken:
        """A Google access token for `account` (subject id or email) with `min_ttl` seconds left.

        Served from the client's cache while a cached token has that long left;
        otherwise the broker's (which refreshes once per expiry, fleet-wide). With
        `scopes`, the account's grant must hold each (`email` is `userinfo.email`, as
        Google has it), else `ScopeNotGranted`, whose `authorization_url` adds them.
        """
        min_ttl = self._settings.default_min_ttl if min_ttl is None else min_ttl
        # Built first, so a malformed argument fails on a cache hit too.
        call = calls.access_token(
            account, min_ttl=min_ttl, force_refresh=force_refresh, scopes=scopes
        )
        cached = self._settings.cached(account, min_ttl, force_refresh, scopes)
        if cached is not None:
            return cached
        requested_at = self._settings.clock()
        try:
            token = await self._call(call)
        except BrokerError as error:
            self._settings.forget_on(account, error)
            raise
        self._settings.remember(account, token, requested_at)
        return token

    # Listings

    async def list_messages(
        self,
        account: str,
        *,
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> MessageList:
        """Every matching message in one answer; for large mailboxes use `stream_messages`
        (past the broker's JSON cap, 200,000 by default, `TooManyForJson`)."""
        params = calls.message_params(q, label_ids, include_spam_trash, limit)
        return await self._call(calls.list_messages(account, params))

    def stream_messages(
        self,
        account: str,
        *,
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> AsyncStream[MessageRef, ListingSummary]:
        """Every matching message as it arrives; `summary` once complete (see `AsyncStream`)."""
        params = calls.message_params(q, label_ids, include_spam_trash, limit)
        return AsyncStream(calls.stream_messages(account, params), self._open_stream)

    # Message details

    async def list_message_details(
        self,
        account: str,
        *,
        format: MessageFormat,  # the broker's and Gmail's name
        metadata_headers: Sequence[str] = (),
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> MessageDetailsList:
        """Every matching message as Gmail's resource in `format`, in one answer.

        At most the broker's JSON cap (1,000 by default; else `TooManyForJson`, before
        any detail is fetched): for more, `stream_message_details`.
        """
        listing = calls.message_params(q, label_ids, include_spam_trash, limit)
        params = calls.details_params(listing, format, metadata_headers)
        return await self._call(calls.list_message_details(account, params))

    def stream_message_details(
        self,
        account: str,
        *,
        format: MessageFormat,
        metadata_headers: Sequence[str] = (),
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> AsyncStream[GmailMessage, DetailsSummary]:
        """Every matching message as Gmail's resource, as the broker fetches them (in Gmail
        batches, at the account's Gmail quota); `summary.not_fetched` once complete."""
        listing = calls.message_params(q, label_ids, include_spam_trash, limit)
        params = calls.details_params(listing, format, metadata_headers)
        return AsyncStream(calls.stream_message_details(account, params), self._open_stream)

    async def get_message(
        self,
        account: str,
        message_id: str,
        *,
        format: MessageFormat = "full",
        metadata_headers: Sequence[str] = (),
    ) -> GmailMessage:
        """One message as Gmail's resource (`users.messages.get`); `MessageNotFound` if gone."""
        return await self._call(calls.get_message(account, message_id, format, metadata_headers))

    # Mailbox changes

    async def changes_cursor(self, account: str) -> str:
        """A cursor at the mailbox's present: changes after this moment follow from it."""
        return (await self.list_changes(account)).cursor

    async def list_changes(
        self,
        account: str,
        cursor: str | None = None,
        *,
        label_id: str | None = None,
        history_types: Sequence[HistoryType] = (),
    ) -> ChangeList:
        """Every change since `cursor` in one answer, and the `cursor` to continue from.

        Without `cursor`: none, and a cursor at the mailbox's present. A cursor Gmail
        no longer has history for raises `CursorExpired`, with a fresh `cursor`.
        """
        params = calls.changes_params(cursor, label_id, history_types)
        return await self._call(calls.list_changes(account, params))

    def stream_changes(
        self,
        account: str,
        cursor: str | None = None,
        *,
        label_id: str | None = None,
        history_types: Sequence[HistoryType] = (),
    ) -> AsyncStream[Change, ChangesSummary]:
        """Every change since `cursor` as it arrives; `summary.cursor` once complete."""
        params = calls.changes_params(cursor, label_id, history_types)
        return AsyncStream(calls.stream_changes(account, params), self._open_stream)

    async def follow_changes(
        self,
        account: str,
        cursor: str | None,
        on_change: Callable[[Change], Awaitable[object]],
        *,
        on_relist: Callable[[str], Awaitable[object]] | None = None,
        label_id: str | None = None,
        history_types: Sequence[HistoryType] = (),
    ) -> ChangesSummary:
        """Hand every change since `cursor` to `on_change`, in order; the summary's `cursor`
        is where to continue next time (keep it once this returns).

        With `on_relist`, a missing (None) or expired cursor is recovered from: a fresh
        cursor is taken, `on_relist(fresh_cursor)` lists the mailbox again (and keeps that
        cursor with what it listed), then the changes since the fresh cursor follow,
        including those made while relisting. Without it, `cursor=None` starts at the
        present and an expired cursor raises `CursorExpired`. A change can come twice (a
        stream cut short is asked again from the same cursor): apply them so that twice
        is harmless.
        """
        relisted = False
        if cursor is None:
            cursor = await self.changes_cursor(account)
            if on_relist is not None:
                await on_relist(cursor)
                relisted = True
        while True:
            stream = self.stream_changes(
                account, cursor, label_id=label_id, history_types=history_types
            )
            try:
                async with stream:
                    async for change in stream:
                        await on_change(change)
            except CursorExpired as expired:
                # One relist per call: a fresh cursor that expires at once again would loop.
                if on_relist is None or relisted or expired.cursor is None:
                    raise
                cursor = expired.cursor
                await on_relist(cursor)
                relisted = True
                continue
            assert stream.summary is not None  # the stream raised otherwise
            return stream.summary

    # Accounts

    async def get_account(self, account: str) -> Account:
        return await self._call(calls.get_account(account))

    async def list_accounts(
        self,
        *,
        email: str | None = None,
        status: str | None = None,
        reason: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> AccountPage:
        """One page of accounts; pass `next_cursor` back as `cursor` for the next (with the
        same filters). `status`: `active`, `revoked` or `suspended`; `reason`: a
        `status_reason` (`expired_testing`, `revoked_by_user`, ...)."""
        return await self._call(
            calls.list_accounts(
                email=email, status=status, reason=reason, cursor=cursor, limit=limit
            )
        )

    async def iter_accounts(
        self,
        *,
        email: str | None = None,
        status: str | None = None,
        reason: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Account]:
        """Every account (with that `status` and `status_reason`, if given), page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_accounts(
                email=email, status=status, reason=reason, cursor=cursor, limit=page_size
            )
            for account in page.items:
                yield account
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete_account(self, account: str) -> Deletion:
        """Revoke the grant at Google, then delete the account and its secrets."""
        try:
            return await self._call(calls.delete_account(account))
        finally:
            self._settings.forget(account)

    async def add_scopes(
        self, account: str, scopes: Sequence[str], *, return_to: str | None = None
    ) -> Authorization:
        """Start adding `scopes` to a connected account (incremental authorization): send
        its user to `authorization_url`, confirm with `get_authorization(id)`. Completed,
        the same account holds them too; as another Google account, or with one unticked,
        nothing is stored (`account_mismatch`, `scope_not_granted` in the outcome)."""
        return await self._call(calls.add_scopes(account, scopes, return_to=return_to))

    # Connecting accounts

    async def start_authorization(
        self,
        *,
        login_hint: str | None = None,
        scopes: Sequence[str] | None = None,
        return_to: str | None = None,
    ) -> Authorization:
        """Start connecting an account: send the user's browser to `authorization_url`."""
        return await self._call(
            calls.start_authorization(login_hint=login_hint, scopes=scopes, return_to=return_to)
        )

    async def get_authorization(self, authorization_id: str) -> AuthorizationOutcome:
        """What an authorization this client started produced: confirm a connect with this,
        never with the redirect's query (anyone can forge that)."""
        return await self._call(calls.get_authorization(authorization_id))

    async def exchange_code(
        self, code: str, *, redirect_uri: str | None = None, code_verifier: str | None = None
    ) -> Account:
        """Connect an account from a code obtained in the browser (Google's code client)."""
        return await self._call(
            calls.exchange_code(code, redirect_uri=redirect_uri, code_verifier=code_verifier)
        )

    # Sending

    async def _call(self, call: Call[T]) -> T:
        response = await self._send(
            lambda: self._settings.request(self._http, call), call.idempotent
        )
        return call.parse(json_body(response))

    async def _open_stream(self, call: StreamCall[Item, Summary]) -> httpx.Response:
        return await self._send(
            lambda: self._settings.stream_request(self._http, call), idempotent=True, stream=True
        )

    async def _send(
        self, build: Callable[[], httpx.Request], idempotent: bool, *, stream: bool = False
    ) -> httpx.Response:
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            error: BrokerError
            try:
                response = await self._http.send(build(), stream=stream)
            except httpx.TransportError as transport_error:
                error = unreachable(transport_error)
            else:
                if response.is_success:
                    return response
                body = await response.aread()
                await response.aclose()
                error = problem_from_response(response, body)
            wait = self._settings.retry.wait_before_retry(
                attempt, error, waited=waited, idempotent=idempotent
            )
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            waited += wait
