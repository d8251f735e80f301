"""The provider's endpoints: from the settings, or from its OpenID Connect discovery document.

OpenID Connect Discovery 1.0 (section 4) puts a provider's configuration at
`<issuer>/.well-known/openid-configuration`, and section 4.3 requires the `issuer`
it names to be identical to the issuer it was fetched for. Google publishes its
document at https://accounts.google.com/.well-known/openid-configuration
(authorization, token, userinfo, revocation and JWKS endpoints; GOOGLE.md), so one
variable, `TOKEN_BROKER_DISCOVERY_URL` or a non-Google `TOKEN_BROKER_ISSUER`,
configures every endpoint; the endpoint variables still override what it says.

Gmail is not in any discovery document. Its root defaults to Google's for Google's
issuer; for any other issuer, to the issuer itself: only a stand-in for Google (the
sandbox serves both) accepts that provider's tokens for Gmail calls.

The document is fetched once, when the app starts, through the shared client.
Connection failures, timeouts and 5xx are retried for a few seconds; after that,
or for an answer that is not a usable document, the start fails with one line
naming the variable and the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from token_broker.google.transport import Upstream, UpstreamProtocolError, json_object
from token_broker.kit.retry import Backoff, RetriesExhausted, retrying
from token_broker.settings import GOOGLE_GMAIL_API_BASE, Settings, env_name, is_google_issuer

# Fetching at start: a provider restarting alongside the broker gets a few seconds.
START_BACKOFF = Backoff(attempts=3, budget=6.0, initial=1.0, maximum=2.0, jitter=0.5)
ONE_TRY = Backoff(attempts=1, budget=1.0)

# Endpoint setting -> the discovery document's field (OpenID Connect Discovery 1.0, 3;
# `revocation_endpoint` from RFC 8414).
DISCOVERED_FIELDS = {
    "auth_uri": "authorization_endpoint",
    "token_uri": "token_endpoint",
    "userinfo_uri": "userinfo_endpoint",
    "revoke_uri": "revocation_endpoint",
    "jwks_uri": "jwks_uri",
}


class DiscoveryFailed(Exception):
    """The discovery document could not be fetched or used; names the variable and URL."""


@dataclass(frozen=True)
class ProviderEndpoints:
    issuer: str
    auth_uri: str
    token_uri: str
    userinfo_uri: str
    revoke_uri: str
    jwks_uri: str
    gmail_api_base: str
    discovered_from: str | None = None

    @classmethod
    def configured(cls, settings: Settings) -> ProviderEndpoints:
        """The endpoints the settings name, without asking the provider."""
        return cls(
            issuer=settings.issuer,
            **{name: getattr(settings, name) for name in DISCOVERED_FIELDS},
            gmail_api_base=_gmail_api_base(settings, settings.issuer),
        )


def _gmail_api_base(settings: Settings, issuer: str) -> str:
    if "gmail_api_base" in settings.model_fields_set or is_google_issuer(issuer):
        return settings.gmail_api_base
    return issuer.rstrip("/") if _is_http_url(issuer) else GOOGLE_GMAIL_API_BASE


async def discover_endpoints(
    upstream: Upstream, settings: Settings, *, backoff: Backoff = START_BACKOFF
) -> ProviderEndpoints:
    """The endpoints to use: discovered when the settings ask for it, else as configured."""
    url = settings.discovery_document_url
    if url is None:
        return ProviderEndpoints.configured(settings)
    variable = env_name("discovery_url" if settings.discovery_url else "issuer")
    try:
        document = await retrying(lambda: _fetch(upstream, url), backoff)
        return _merge(settings, document, url)
    except RetriesExhausted as error:
        raise DiscoveryFailed(
            f"{variable}: no answer from {url} ({error.last.reason}; tried {error.attempts} "
            f"time{'s' if error.attempts > 1 else ''})"
        ) from None
    except (UpstreamProtocolError, ValueError) as error:
        raise DiscoveryFailed(
            f"{variable}: {url} is not a usable discovery document: {error}"
        ) from None


async def _fetch(upstream: Upstream, url: str) -> dict[str, Any]:
    response = await upstream.send("discovery", "GET", url)
    if response.status_code != 200:
        raise UpstreamProtocolError(f"HTTP {response.status_code}")
    return json_object(response)


def _merge(settings: Settings, document: dict[str, Any], url: str) -> ProviderEndpoints:
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not _is_http_url(issuer):
        raise ValueError("it names no issuer")
    if "issuer" in settings.model_fields_set and issuer.rstrip("/") != settings.issuer.rstrip("/"):
        raise ValueError(
            f"it is for issuer {issuer}, not {settings.issuer} ({env_name('issuer')}); "
            "OpenID Connect requires them identical"
        )
    endpoints: dict[str, str] = {}
    for name, field in DISCOVERED_FIELDS.items():
        if name in settings.model_fields_set:
            endpoints[name] = getattr(settings, name)
            continue
        value = document.get(field)
        if not isinstance(value, str) or not _is_http_url(value):
            raise ValueError(f"it has no usable {field}; set {env_name(name)}")
        endpoints[name] = value
    return ProviderEndpoints(
        issuer=issuer,
        **endpoints,
        gmail_api_base=_gmail_api_base(settings, issuer),
        discovered_from=url,
    )


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
