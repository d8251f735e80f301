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

Credentials made with `scopes` (or copied with `with_scopes`) ask the broker for a
token whose grant holds each of them: a grant without one raises `ScopeNotGranted`
(with the `authorization_url` that adds it) at the refresh, instead of a 403 from
Google on the first call that needs it. Without `scopes` the token carries whatever
the account was granted. google-auth's `requires_scopes` is False: the grant is the
broker's, so client libraries (googleapiclient's `build`, which would ask for every
scope of the API) leave the scopes as given.

Needs the `google` extra: `pip install "token-broker-client[google]"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timezone
from typing import Any

from google.auth import credentials as google_credentials
from google.auth.exceptions import RefreshError

from token_broker_client._errors import BrokerError, BrokerProblem, BrokerUnreachable
from token_broker_client._scopes import missing
from token_broker_client._sync_client import SyncBrokerClient

__all__ = ["BrokerCredentials"]

# google-auth refreshes 3 min 45 s before expiry: a token with less left than that
# would look expired the moment it arrived, so never ask for less.
_MIN_TTL_FLOOR = 225 + 15


class BrokerCredentials(google_credentials.Scoped, google_credentials.Credentials):
    """Credentials for one account whose refresh asks the broker (sync client); with
    `scopes`, for a token whose grant holds each of them."""

    def __init__(
        self,
        client: SyncBrokerClient,
        account: str,
        *,
        min_ttl: int | None = None,
        scopes: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(client, SyncBrokerClient):
            raise TypeError(
                "BrokerCredentials needs a SyncBrokerClient: google-auth refreshes synchronously"
            )
        if isinstance(scopes, str):
            raise TypeError("scopes takes a list of strings, not a string")
        super().__init__()  # type: ignore[no-untyped-call]
        self._client = client
        self._account = account
        self._min_ttl = max(_MIN_TTL_FLOOR, min_ttl or 0)
        self._scopes = None if scopes is None else list(scopes)

    @property
    def account(self) -> str:
        return self._account

    @property
    def requires_scopes(self) -> bool:
        """False: the broker holds the grant; a token carries the scopes it was granted."""
        return False

    def with_scopes(
        self, scopes: Sequence[str] | None, default_scopes: Sequence[str] | None = None
    ) -> BrokerCredentials:
        """A copy asking for tokens that hold `scopes`. `default_scopes` (a client library's
        guess, often every scope of its API) are kept for `has_scopes` but not required:
        a grant without them could still serve every call made."""
        copy = BrokerCredentials(self._client, self._account, min_ttl=self._min_ttl, scopes=scopes)
        copy._default_scopes = None if default_scopes is None else list(default_scopes)
        return copy

    def has_scopes(self, scopes: Sequence[str]) -> bool:
        """Whether these credentials ask for every scope of `scopes` (as Google compares
        them: `email` is `userinfo.email`)."""
        asked = self._scopes if self._scopes is not None else self._default_scopes
        return not missing(scopes, asked or ())

    def __repr__(self) -> str:
        return (
            f"BrokerCredentials(account={self._account!r}, scopes={self._scopes!r}, "
            f"expiry={self.expiry!r})"
        )

    def refresh(self, request: Any) -> None:
        """Fetch a fresh token from the broker (`request`, google-auth's transport, is unused)."""
        held = self.token
        scopes = self._scopes or ()
        try:
            issued = self._client.access_token(self._account, min_ttl=self._min_ttl, scopes=scopes)
            if held is not None and issued.access_token == held:
                issued = self._client.access_token(
                    self._account, min_ttl=self._min_ttl, force_refresh=True, scopes=scopes
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
