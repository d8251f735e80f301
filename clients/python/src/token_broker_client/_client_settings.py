"""What `BrokerClient` and `SyncBrokerClient` share: settings, requests, the token cache.

Both send the endpoint descriptions of `_calls.py`, retry by `RetryPolicy`, read
errors through `problem_from_response`, and keep access tokens in a `TokenCache`.
Neither logs anything, and neither shows its API key or a token in a repr.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from token_broker_client._cache import TokenCache
from token_broker_client._calls import NDJSON, Call, StreamCall
from token_broker_client._errors import (
    AccountNotFound,
    AccountSuspended,
    BrokerError,
    BrokerUnreachable,
    ReauthorizationRequired,
    UnexpectedResponse,
)
from token_broker_client._models import AccessToken
from token_broker_client._retry import RetryPolicy
from token_broker_client._version import __version__

DEFAULT_MIN_TTL = 300
# A listing page may take the broker a while (Gmail retries within its budget): the
# read timeout is per chunk of the answer, not for the whole stream.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class ClientSettings:
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

    def cached(
        self, account: str, min_ttl: int, force_refresh: bool, scopes: Sequence[str]
    ) -> AccessToken | None:
        if self.token_cache is None or force_refresh:
            return None
        return self.token_cache.get(account, min_ttl, scopes)

    def remember(self, account: str, token: AccessToken, requested_at: float) -> None:
        if self.token_cache is not None:
            self.token_cache.put(account, token, requested_at=requested_at)

    def forget_on(self, account: str, error: BrokerError) -> None:
        """A dead grant, a suspended or deleted account: its cached token must not be served
        again (the broker serves none either)."""
        if isinstance(error, ReauthorizationRequired | AccountSuspended | AccountNotFound):
            self.forget(account)

    def forget(self, account: str) -> None:
        if self.token_cache is not None:
            self.token_cache.forget(account)

    def clock(self) -> float:
        return self.token_cache.clock() if self.token_cache is not None else time.monotonic()

    def __repr__(self) -> str:
        return f"base_url={self.base_url!r}"


def unreachable(error: httpx.TransportError) -> BrokerUnreachable:
    # Nothing of the request reached the broker when the connection never opened.
    sent = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
    return BrokerUnreachable(
        f"the broker did not answer: {type(error).__name__}", request_sent=sent
    )


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponse(
            f"HTTP {response.status_code} from the broker with a body that is not JSON",
            status=response.status_code,
        ) from None
