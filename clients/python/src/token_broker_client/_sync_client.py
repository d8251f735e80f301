"""`SyncBrokerClient`: the broker's REST API for threaded code (see `_client_settings.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
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
from token_broker_client._streams import SyncStream

T = TypeVar("T")
Item = TypeVar("Item")
Summary = TypeVar("Summary")


class SyncBrokerClient:
    """The broker's REST API for threaded code (and for `BrokerCredentials`); thread-safe.

    ```python
    with SyncBrokerClient("http://token-broker", api_key) as broker:
        token = broker.access_token("alice@example.com")
    ```
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
        http: httpx.Client | None = None,
    ) -> None:
        self._settings = ClientSettings(
            base_url, api_key, retry=retry, token_cache=token_cache,
            default_min_ttl=default_min_ttl,
        )  # fmt: skip
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"SyncBrokerClient({self._settings!r})"

    def __enter__(self) -> SyncBrokerClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # Tokens

    def access_token(
        self,
        account: str,
        *,
        min_ttl: int | None = None,
        force_refresh: bool = False,
        scopes: Sequence[str] = (),
    ) -> AccessToken:
        """A Google access token for `account` with `min_ttl` seconds left, holding `scopes`
        (see `BrokerClient`)."""
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
            token = self._call(call)
        except BrokerError as error:
            self._settings.forget_on(account, error)
            raise
        self._settings.remember(account, token, requested_at)
        return token

    # Listings

    def list_messages(
        self,
        account: str,
        *,
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> MessageList:
        params = calls.message_params(q, label_ids, include_spam_trash, limit)
        return self._call(calls.list_messages(account, params))

    def stream_messages(
        self,
        account: str,
        *,
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> SyncStream[MessageRef, ListingSummary]:
        params = calls.message_params(q, label_ids, include_spam_trash, limit)
        return SyncStream(calls.stream_messages(account, params), self._open_stream)

    # Message details

    def list_message_details(
        self,
        account: str,
        *,
        format: MessageFormat,
        metadata_headers: Sequence[str] = (),
        q: str | None = None,
        label_ids: Sequence[str] = (),
        include_spam_trash: bool = False,
        limit: int | None = None,
    ) -> MessageDetailsList:
        listing = calls.message_params(q, label_ids, include_spam_trash, limit)
        params = calls.details_params(listing, format, metadata_headers)
        return self._call(calls.list_message_details(account, params))

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
    ) -> SyncStream[GmailMessage, DetailsSummary]:
        listing = calls.message_params(q, label_ids, include_spam_trash, limit)
        params = calls.details_params(listing, format, metadata_headers)
        return SyncStream(calls.stream_message_details(account, params), self._open_stream)

    def get_message(
        self,
        account: str,
        message_id: str,
        *,
        format: MessageFormat = "full",
        metadata_headers: Sequence[str] = (),
    ) -> GmailMessage:
        return self._call(calls.get_message(account, message_id, format, metadata_headers))

    # Mailbox changes

    def changes_cursor(self, account: str) -> str:
        return self.list_changes(account).cursor

    def list_changes(
        self,
        account: str,
        cursor: str | None = None,
        *,
        label_id: str | None = None,
        history_types: Sequence[HistoryType] = (),
    ) -> ChangeList:
        params = calls.changes_params(cursor, label_id, history_types)
        return self._call(calls.list_changes(account, params))

    def stream_changes(
        self,
        account: str,
        cursor: str | None = None,
        *,
        label_id: str | None = None,
        history_types: Sequence[HistoryType] = (),
    ) -> SyncStream[Change, ChangesSummary]:
        params = calls.changes_params(cursor, label_id, history_types)
        return SyncStream(calls.stream_changes(account, params), self._open_stream)

    def follow_changes(
        self,
        account: str,
        cursor: str | None,
        on_change: Callable[[Change], object],
        *,
        on_relist: Callable[[str], object] | None = None,
        label_id: str | None = None,
        history_types: Sequence[HistoryType] = (),
    ) -> ChangesSummary:
        """Hand every change since `cursor` to `on_change` (see `BrokerClient.follow_changes`)."""
        relisted = False
        if cursor is None:
            cursor = self.changes_cursor(account)
            if on_relist is not None:
                on_relist(cursor)
                relisted = True
        while True:
            stream = self.stream_changes(
                account, cursor, label_id=label_id, history_types=history_types
            )
            try:
                with stream:
                    for change in stream:
                        on_change(change)
            except CursorExpired as expired:
                # One relist per call: a fresh cursor that expires at once again would loop.
                if on_relist is None or relisted or expired.cursor is None:
                    raise
                cursor = expired.cursor
                on_relist(cursor)
                relisted = True
                continue
            assert stream.summary is not None  # the stream raised otherwise
            return stream.summary

    # Accounts

    def get_account(self, account: str) -> Account:
        return self._call(calls.get_account(account))

    def list_accounts(
        self,
        *,
        email: str | None = None,
        status: str | None = None,
        reason: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> AccountPage:
        return self._call(
            calls.list_accounts(
                email=email, status=status, reason=reason, cursor=cursor, limit=limit
            )
        )

    def iter_accounts(
        self,
        *,
        email: str | None = None,
        status: str | None = None,
        reason: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Account]:
        cursor: str | None = None
        while True:
            page = self.list_accounts(
                email=email, status=status, reason=reason, cursor=cursor, limit=page_size
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_account(self, account: str) -> Deletion:
        try:
            return self._call(calls.delete_account(account))
        finally:
            self._settings.forget(account)

    def add_scopes(
        self, account: str, scopes: Sequence[str], *, return_to: str | None = None
    ) -> Authorization:
        return self._call(calls.add_scopes(account, scopes, return_to=return_to))

    # Connecting accounts

    def start_authorization(
        self,
        *,
        login_hint: str | None = None,
        scopes: Sequence[str] | None = None,
        return_to: str | None = None,
    ) -> Authorization:
        return self._call(
            calls.start_authorization(login_hint=login_hint, scopes=scopes, return_to=return_to)
        )

    def get_authorization(self, authorization_id: str) -> AuthorizationOutcome:
        return self._call(calls.get_authorization(authorization_id))

    def exchange_code(
        self, code: str, *, redirect_uri: str | None = None, code_verifier: str | None = None
    ) -> Account:
        return self._call(
            calls.exchange_code(code, redirect_uri=redirect_uri, code_verifier=code_verifier)
        )

    # Sending

    def _call(self, call: Call[T]) -> T:
        response = self._send(lambda: self._settings.request(self._http, call), call.idempotent)
        return call.parse(json_body(response))

    def _open_stream(self, call: StreamCall[Item, Summary]) -> httpx.Response:
        return self._send(
            lambda: self._settings.stream_request(self._http, call), idempotent=True, stream=True
        )

    def _send(
        self, build: Callable[[], httpx.Request], idempotent: bool, *, stream: bool = False
    ) -> httpx.Response:
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            error: BrokerError
            try:
                response = self._http.send(build(), stream=stream)
            except httpx.TransportError as transport_error:
                error = unreachable(transport_error)
            else:
                if response.is_success:
                    return response
                body = response.read()
                response.close()
                error = problem_from_response(response, body)
            wait = self._settings.retry.wait_before_retry(
                attempt, error, waited=waited, idempotent=idempotent
            )
            if wait is None:
                raise error
            time.sleep(wait)
            waited += wait
