"""`BrokerClient` (asyncio) and `SyncBrokerClient` (threads): the same methods, the same rules.

Both send the endpoint descriptions of `_calls.py`, retry by `RetryPolicy`, read
errors through `problem_from_response`, and keep access tokens in a `TokenCache`.
Neither logs anything, and neither shows its API key or a token in a repr.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from token_broker_client import _calls as calls
from token_broker_client._cache import TokenCache
from token_broker_client._calls import NDJSON, Call, StreamCall
from token_broker_client._errors import (
    AccountNotFound,
    BrokerError,
    BrokerUnreachable,
    ReauthorizationRequired,
    UnexpectedResponse,
    problem_from_response,
)
from token_broker_client._models import (
    AccessToken,
    Account,
    AccountPage,
    Authorization,
    Deletion,
    ListingSummary,
    MessageList,
    MessageRef,
)
from token_broker_client._retry import RetryPolicy
from token_broker_client._streams import AsyncStream, SyncStream
from token_broker_client._version import __version__

T = TypeVar("T")
Item = TypeVar("Item")
Summary = TypeVar("Summary")

DEFAULT_MIN_TTL = 300
# A listing page may take the broker a while (Gmail retries within its budget): the
# read timeout is per chunk of the answer, not for the whole stream.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class _Settings:
    """What both clients are configured with."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        retry: RetryPolicy | None,
        token_cache: TokenCache | bool,
        default_min_ttl: int,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required (the broker's `tbk_...` key)")
        if not 0 <= default_min_ttl <= 3300:
            raise ValueError("default_min_ttl must be within 0..3300 seconds")
        self.base_url = base_url.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"token-broker-client/{__version__}",
            "Accept": "application/json",
        }
        self.retry = retry or RetryPolicy()
        if token_cache is True:
            token_cache = TokenCache()
        self.token_cache: TokenCache | None = token_cache or None
        self.default_min_ttl = default_min_ttl

    def request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        return http.build_request(
            call.method, self.base_url + call.path, params=tuple(call.params), json=call.json,
            headers=self.headers,
        )  # fmt: skip

    def stream_request(
        self, http: httpx.Client | httpx.AsyncClient, call: StreamCall[Any, Any]
    ) -> httpx.Request:
        return http.build_request(
            "GET", self.base_url + call.path, params=tuple(call.params),
            headers={**self.headers, "Accept": NDJSON},
        )  # fmt: skip

    def cached(self, account: str, min_ttl: int, force_refresh: bool) -> AccessToken | None:
        if self.token_cache is None or force_refresh:
            return None
        return self.token_cache.get(account, min_ttl)

    def remember(self, account: str, token: AccessToken, requested_at: float) -> None:
        if self.token_cache is not None:
            self.token_cache.put(account, token, requested_at=requested_at)

    def forget_on(self, account: str, error: BrokerError) -> None:
        """A dead grant or a deleted account: its cached token must not be served again."""
        if isinstance(error, ReauthorizationRequired | AccountNotFound):
            self.forget(account)

    def forget(self, account: str) -> None:
        if self.token_cache is not None:
            self.token_cache.forget(account)

    def clock(self) -> float:
        return self.token_cache.clock() if self.token_cache is not None else time.monotonic()

    def __repr__(self) -> str:
        return f"base_url={self.base_url!r}"


def _unreachable(error: httpx.TransportError) -> BrokerUnreachable:
    # Nothing of the request reached the broker when the connection never opened.
    sent = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
    return BrokerUnreachable(
        f"the broker did not answer: {type(error).__name__}", request_sent=sent
    )


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponse(
            f"HTTP {response.status_code} from the broker with a body that is not JSON",
            status=response.status_code,
        ) from None


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
        self._settings = _Settings(
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
        self, account: str, *, min_ttl: int | None = None, force_refresh: bool = False
    ) -> AccessToken:
        """A Google access token for `account` (subject id or email) with `min_ttl` seconds left.

        Served from the client's cache while a cached token has that long left;
        otherwise the broker's (which refreshes once per expiry, fleet-wide).
        """
        min_ttl = self._settings.default_min_ttl if min_ttl is None else min_ttl
        cached = self._settings.cached(account, min_ttl, force_refresh)
        if cached is not None:
            return cached
        requested_at = self._settings.clock()
        try:
            token = await self._call(
                calls.access_token(account, min_ttl=min_ttl, force_refresh=force_refresh)
            )
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
        """Every matching message in one answer; for large mailboxes use `stream_messages`."""
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

    # Accounts

    async def get_account(self, account: str) -> Account:
        return await self._call(calls.get_account(account))

    async def list_accounts(
        self,
        *,
        email: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> AccountPage:
        """One page of accounts; pass `next_cursor` back as `cursor` for the next."""
        return await self._call(
            calls.list_accounts(email=email, status=status, cursor=cursor, limit=limit)
        )

    async def iter_accounts(
        self, *, email: str | None = None, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Account]:
        """Every account, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_accounts(
                email=email, status=status, cursor=cursor, limit=page_size
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
        return call.parse(_body(response))

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
                error = _unreachable(transport_error)
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
        self._settings = _Settings(
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
        self, account: str, *, min_ttl: int | None = None, force_refresh: bool = False
    ) -> AccessToken:
        """A Google access token for `account` with `min_ttl` seconds left (see `BrokerClient`)."""
        min_ttl = self._settings.default_min_ttl if min_ttl is None else min_ttl
        cached = self._settings.cached(account, min_ttl, force_refresh)
        if cached is not None:
            return cached
        requested_at = self._settings.clock()
        try:
            token = self._call(
                calls.access_token(account, min_ttl=min_ttl, force_refresh=force_refresh)
            )
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

    # Accounts

    def get_account(self, account: str) -> Account:
        return self._call(calls.get_account(account))

    def list_accounts(
        self,
        *,
        email: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> AccountPage:
        return self._call(
            calls.list_accounts(email=email, status=status, cursor=cursor, limit=limit)
        )

    def iter_accounts(
        self, *, email: str | None = None, status: str | None = None, page_size: int = 100
    ) -> Iterator[Account]:
        cursor: str | None = None
        while True:
            page = self.list_accounts(email=email, status=status, cursor=cursor, limit=page_size)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_account(self, account: str) -> Deletion:
        try:
            return self._call(calls.delete_account(account))
        finally:
            self._settings.forget(account)

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

    def exchange_code(
        self, code: str, *, redirect_uri: str | None = None, code_verifier: str | None = None
    ) -> Account:
        return self._call(
            calls.exchange_code(code, redirect_uri=redirect_uri, code_verifier=code_verifier)
        )

    # Sending

    def _call(self, call: Call[T]) -> T:
        response = self._send(lambda: self._settings.request(self._http, call), call.idempotent)
        return call.parse(_body(response))

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
                error = _unreachable(transport_error)
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
