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
    AccountMismatch,
    AccountNotFound,
    AmbiguousAccount,
    AuthorizationNotFound,
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
    InvalidLink,
    InvalidState,
    IssuerMismatch,
    MessageNotFound,
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
    TooManyForJson,
    Unauthenticated,
    UnexpectedResponse,
    UnknownLabel,
    UnsupportedMediaType,
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
    "AccountMismatch",
    "AccountNotFound",
    "AccountPage",
    "AmbiguousAccount",
    "AsyncStream",
    "Authorization",
    "AuthorizationNotFound",
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
    "InvalidLink",
    "InvalidState",
    "IssuerMismatch",
    "ListingSummary",
    "MessageList",
    "MessageNotFound",
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
    "TooManyForJson",
    "Unauthenticated",
    "UnexpectedResponse",
    "UnknownLabel",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "UriTooLong",
    "ValidationFailed",
    "__version__",
    "problem_class",
]
