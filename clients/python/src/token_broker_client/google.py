"""`BrokerCredentials`: Google's client libraries with tokens from the broker.

```python
from googleapiclient.discovery import build
from token_broker_client import SyncBrokerClient
from token_broker_client.google import BrokerCredentials

broker = SyncBrokerClient("http://token-broker", api_key)
gmail = build("gmail", "v1", credentials=BrokerCredentials(broker, "alice@example.com"))
```

google-auth refreshes credentials when they are about to expire and when Google
answers 401; either way `refresh` asks the broker. A 401 means Google refused the
very token held, so if the broker hands back that same token, it is asked again
with `force_refresh`. Failures are raised as the client's usual exceptions that are
also `google.auth.exceptions.RefreshError`, so both
`except ReauthorizationRequired as e` and `except RefreshError` catch them.

Needs the `google` extra: `pip install "token-broker-client[google]"`.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from google.auth import credentials as google_credentials
from google.auth.exceptions import RefreshError

from token_broker_client._errors import BrokerError, BrokerProblem, BrokerUnreachable
from token_broker_client._sync_client import SyncBrokerClient

__all__ = ["BrokerCredentials"]

# google-auth refreshes 3 min 45 s before expiry: a token with less left than that
# would look expired the moment it arrived, so never ask for less.
_MIN_TTL_FLOOR = 225 + 15


class BrokerCredentials(google_credentials.Credentials):
    """Credentials for one account whose refresh asks the broker (sync client)."""

    def __init__(
        self, client: SyncBrokerClient, account: str, *, min_ttl: int | None = None
    ) -> None:
        if not isinstance(client, SyncBrokerClient):
            raise TypeError(
                "BrokerCredentials needs a SyncBrokerClient: google-auth refreshes synchronously"
            )
        super().__init__()  # type: ignore[no-untyped-call]
        self._client = client
        self._account = account
        self._min_ttl = max(_MIN_TTL_FLOOR, min_ttl or 0)

    @property
    def account(self) -> str:
        return self._account

    def __repr__(self) -> str:
        return f"BrokerCredentials(account={self._account!r}, expiry={self.expiry!r})"

    def refresh(self, request: Any) -> None:
        """Fetch a fresh token from the broker (`request`, google-auth's transport, is unused)."""
        held = self.token
        try:
            issued = self._client.access_token(self._account, min_ttl=self._min_ttl)
            if held is not None and issued.access_token == held:
                issued = self._client.access_token(
                    self._account, min_ttl=self._min_ttl, force_refresh=True
                )
        except BrokerError as error:
            raise as_refresh_error(error) from error
        self.token = issued.access_token
        # google-auth compares expiry with a naive UTC "now".
        self.expiry = issued.expires_at.astimezone(timezone.utc).replace(tzinfo=None)


def as_refresh_error(error: BrokerError) -> Exception:
    """The same failure as an exception google-auth and its callers expect."""
    if isinstance(error, BrokerProblem):
        mixed = _refresh_error_class(type(error))
        return mixed(error.problem, status=error.status, retry_after=error.retry_after)
    retryable = isinstance(error, BrokerUnreachable)
    return RefreshError(  # type: ignore[no-untyped-call]
        f"the broker could not provide a token: {error}", retryable=retryable
    )


_REFRESH_ERROR_CLASSES: dict[type[BrokerProblem], type[BrokerProblem]] = {}


def _refresh_error_class(problem_class: type[BrokerProblem]) -> type[BrokerProblem]:
    """`problem_class`, also a `RefreshError`: one such class per problem class."""
    mixed = _REFRESH_ERROR_CLASSES.get(problem_class)
    if mixed is None:
        mixed = type(
            problem_class.__name__, (problem_class, RefreshError), {"__module__": __name__}
        )
        _REFRESH_ERROR_CLASSES[problem_class] = mixed
    return mixed
