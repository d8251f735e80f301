"""Token Broker's Python client: access tokens, Gmail listings, accounts, and connect flows.

```python
from token_broker_client import BrokerClient, ReauthorizationRequired

async with BrokerClient("http://token-broker", api_key) as broker:
    try:
        token = await broker.access_token("alice@example.com")
    except ReauthorizationRequired as e:
        notify(user, e.authorization_url)
```

`token_broker_client.google.BrokerCredentials` plugs the broker into Google's
client libraries (extra `google`).
"""

from token_broker_client._cache import TokenCache
from token_broker_client._clients import BrokerClient, SyncBrokerClient
from token_broker_client._errors import (
    AccessDenied,
    AccountNotFound,
    BadRequest,
    BrokerError,
    BrokerProblem,
    BrokerUnreachable,
    CodeExchangeFailed,
    DatabaseUnavailable,
    Forbidden,
    HeadersTooLarge,
    IncompleteStream,
    InternalError,
    InvalidCursor,
    InvalidState,
    MethodNotAllowed,
    NoRefreshToken,
    NotFound,
    NotReady,
    NoUserId,
    PayloadTooLarge,
    ProviderRejectedClient,
    RateLimited,
    ReauthorizationRequired,
    ReturnToNotAllowed,
    ScopeNotAllowed,
    ScopeNotGranted,
    ShuttingDown,
    Unauthenticated,
    UnexpectedResponse,
    UnknownLabel,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UriTooLong,
    ValidationFailed,
    problem_class,
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

__all__ = [
    "AccessDenied",
    "AccessToken",
    "Account",
    "AccountNotFound",
    "AccountPage",
    "AsyncStream",
    "Authorization",
    "BadRequest",
    "BrokerClient",
    "BrokerError",
    "BrokerProblem",
    "BrokerUnreachable",
    "CodeExchangeFailed",
    "DatabaseUnavailable",
    "Deletion",
    "Forbidden",
    "HeadersTooLarge",
    "IncompleteStream",
    "InternalError",
    "InvalidCursor",
    "InvalidState",
    "ListingSummary",
    "MessageList",
    "MessageRef",
    "MethodNotAllowed",
    "NoRefreshToken",
    "NoUserId",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "ProviderRejectedClient",
    "RateLimited",
    "ReauthorizationRequired",
    "RetryPolicy",
    "ReturnToNotAllowed",
    "ScopeNotAllowed",
    "ScopeNotGranted",
    "ShuttingDown",
    "SyncBrokerClient",
    "SyncStream",
    "TokenCache",
    "Unauthenticated",
    "UnexpectedResponse",
    "UnknownLabel",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "UriTooLong",
    "ValidationFailed",
    "__version__",
    "problem_class",
]
