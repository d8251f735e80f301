"""Configuration from `TOKEN_BROKER_*` variables, `.env`, and Google's client_secrets.json.

Variable names are part of the product's interface (the README's Configuration table). A wrong or
missing value is reported as `ConfigurationError`, one line per variable, naming
the variable and what it expects, never echoing a secret.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from token_broker.scopes import missing as missing_scopes

ENV_PREFIX = "TOKEN_BROKER_"

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_USERINFO_URI = "https://openidconnect.googleapis.com/v1/userinfo"
GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"
GOOGLE_JWKS_URI = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_GMAIL_API_BASE = "https://gmail.googleapis.com"
GOOGLE_ISSUER = "https://accounts.google.com"
# Google's ID tokens carry either form (GOOGLE.md, "Identity").
GOOGLE_ISSUERS = (GOOGLE_ISSUER, "accounts.google.com")
GOOGLE_RISC_API_BASE = "https://risc.googleapis.com"
GMAIL_READONLY_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
DEFAULT_SCOPES = ("openid", "email", "profile", GMAIL_READONLY_SCOPE)

# Older client_secrets.json files name the v1 endpoints; the v2 authorization endpoint
# is the one that understands `prompt=consent`, so known legacy URLs are upgraded.
_LEGACY_GOOGLE_ENDPOINTS = {
    "https://accounts.google.com/o/oauth2/auth": GOOGLE_AUTH_URI,
    "https://accounts.google.com/o/oauth2/token": GOOGLE_TOKEN_URI,
    "https://www.googleapis.com/oauth2/v4/token": GOOGLE_TOKEN_URI,
}


class ConfigurationError(Exception):
    """Configuration that cannot work; each problem names its variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def is_google_issuer(issuer: str) -> bool:
    return issuer.rstrip("/") in GOOGLE_ISSUERS


# Google's rules for project ids and topic names (Cloud Resource Manager, Pub/Sub).
_PUBSUB_TOPIC = re.compile(
    r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}$"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _split(value: Any, separator: str | None) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(separator) if item.strip()]
    return value


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class Settings(BaseSettings):
    """Every setting of the broker. Build with `load_settings()` for clear errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    environment: Literal["production", "development"] = "production"
    database_url: str = "sqlite+aiosqlite:///./token-broker.db"
    encryption_keys: SecretStr | None = None

    google_client_secrets_file: Path | None = None
    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    redirect_uri: str | None = None
    exchange_redirect_uri: str = "postmessage"
    scopes: Annotated[tuple[str, ...], NoDecode] = DEFAULT_SCOPES
    required_scopes: Annotated[tuple[str, ...], NoDecode] = (GMAIL_READONLY_SCOPE,)
    issuer: str = GOOGLE_ISSUER
    # OpenID Connect discovery: one URL for every endpoint (google/discovery.py).
    discovery_url: str | None = None
    auth_uri: str = GOOGLE_AUTH_URI
    token_uri: str = GOOGLE_TOKEN_URI
    userinfo_uri: str = GOOGLE_USERINFO_URI
    revoke_uri: str = GOOGLE_REVOKE_URI
    jwks_uri: str = GOOGLE_JWKS_URI
    gmail_api_base: str = GOOGLE_GMAIL_API_BASE
    token_endpoint_auth_method: Literal["client_secret_post", "client_secret_basic"] = (
        "client_secret_post"
    )
    return_to_allowlist: Annotated[tuple[str, ...], NoDecode] = ()

    # Upstream HTTP
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    http_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    http_max_connections: int = Field(default=100, ge=1, le=10_000)

    # OAuth flow
    state_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    # Long enough for a link in a 409 to be emailed to the user and opened days later.
    reauthorization_link_ttl_seconds: int = Field(default=7 * 86_400, ge=300, le=30 * 86_400)
    authorization_retention_days: int = Field(default=30, ge=1, le=3650)
    id_token_leeway_seconds: int = Field(default=60, ge=0, le=600)
    jwks_cache_seconds: int = Field(default=3600, ge=0, le=86_400)

    # Access tokens
    default_min_ttl_seconds: int = Field(default=300, ge=0, le=3300)
    default_token_lifetime_seconds: int = Field(default=600, ge=60, le=3600)
    token_cache_size: int = Field(default=100_000, ge=1, le=10_000_000)
    refresh_attempts: int = Field(default=3, ge=1, le=10)
    refresh_budget_seconds: float = Field(default=8.0, gt=0, le=120)
    refresh_cooldown_seconds: float = Field(default=5.0, ge=0, le=600)
    lock_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    refresh_lease_seconds: float = Field(default=15.0, ge=5, le=600)
    refresh_concurrency: int = Field(default=32, ge=1, le=1000)
    token_audit_window_seconds: int = Field(default=3600, ge=1, le=86_400)
    # A forced refresh within this long of the account's last token gets that token.
    forced_refresh_interval_seconds: float = Field(default=5.0, ge=0, le=3600)

    # Gmail
    gmail_attempts: int = Field(default=5, ge=1, le=20)
    gmail_budget_seconds: float = Field(default=30.0, gt=0, le=600)
    gmail_backoff_seconds: float = Field(default=1.0, gt=0, le=30)
    # Gmail's per-user quota (units a minute: 6,000 for projects created since May 2026,
    # 15,000 before), shared by every Gmail call for one user; details in batches.
    gmail_quota_units_per_minute: int = Field(default=6000, ge=60, le=10_000_000)
    gmail_quota_burst_units: int = Field(default=500, ge=5, le=10_000_000)
    gmail_quota_fallback_fraction: float = Field(default=0.5, gt=0, le=1)
    gmail_user_concurrency: int = Field(default=50, ge=1, le=1000)
    gmail_batch_size: int = Field(default=50, ge=1, le=100)
    gmail_details_json_max_messages: int = Field(default=1000, ge=1, le=100_000)
    redis_url: SecretStr | None = None
    redis_key_prefix: str = Field(default="token-broker:", max_length=100)
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    json_listing_max_messages: int = Field(default=200_000, ge=1, le=10_000_000)

    # Callers
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # `clients rotate`: how long the replaced key keeps working (callers move over meanwhile).
    api_key_rotation_overlap_seconds: int = Field(default=86_400, ge=0, le=30 * 86_400)
    rate_limit_per_second: float = Field(default=1000.0, ge=0, le=1_000_000)
    rate_limit_burst: float = Field(default=2000.0, ge=1, le=10_000_000)
    key_lookups_per_second: float = Field(default=200.0, ge=0, le=100_000)
    max_body_bytes: int = Field(default=65_536, ge=1024, le=10_485_760)
    # Client connections (web/serving.py): a request head, then its body, must arrive within
    # these; past the connection budget, the longest-waiting idle connection is closed.
    request_head_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    request_body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_connections: int = Field(default=10_000, ge=16, le=1_000_000)

    # Operations
    metrics_enabled: bool = True
    # Set: /metrics is served on this port only (not the API's), so a network policy can
    # keep it to the monitoring network.
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    metrics_host: str = Field(default="0.0.0.0", min_length=1, max_length=255)  # noqa: S104
    metrics_accounts_interval_seconds: float = Field(default=30.0, ge=1, le=3600)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=600)
    keepalive_enabled: bool | None = None
    keepalive_after_days: int = Field(default=30, ge=1, le=180)
    keepalive_interval_seconds: int = Field(default=3600, ge=10, le=86_400)
    keepalive_batch: int = Field(default=500, ge=1, le=100_000)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(default=10, ge=1, le=50)

    # Mailbox changes: Gmail push through Cloud Pub/Sub (on when the topic is set)
    gmail_push_topic: str | None = None
    gmail_push_audience: str | None = None
    gmail_push_service_account: str | None = None
    gmail_push_coalesce_seconds: float = Field(default=5.0, ge=0, le=3600)
    gmail_push_fallback_seconds: float = Field(default=600.0, ge=1, le=86_400)
    gmail_watch_renewals_per_minute: float = Field(default=120.0, gt=0, le=100_000)

    # Grant health (services/grant_health.py, services/grant_expiry.py)
    # Google's publishing status of the OAuth app: in testing, grants with scopes beyond
    # name, email and profile end 7 days after consent.
    google_publishing_status: Literal["testing", "production"] = "production"
    expiring_notice_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    grant_health_interval_seconds: int = Field(default=60, ge=1, le=3600)

    # Cross-Account Protection (RISC): the receiver at POST /v1/risc, and `token-broker risc`
    risc_configuration_url: str | None = None  # default: beside the issuer's discovery
    risc_audiences: Annotated[tuple[str, ...], NoDecode] = ()  # besides the client id
    risc_max_age_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)
    risc_service_account_file: Path | None = None
    risc_api_base: str = GOOGLE_RISC_API_BASE
    risc_receiver_url: str | None = None  # default: /v1/risc beside the redirect URI

    # Storage
    db_pool_size: int = Field(default=10, ge=1, le=500)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    migrate_wait_seconds: float = Field(default=30.0, ge=0, le=600)

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] | None = None
    # Unset: on in development, off in production. A JSON access line costs about as
    # much as serving a cached token (README, "Performance"); proxies log requests too.
    access_log: bool | None = None

    @field_validator("scopes", "required_scopes", mode="before")
    @classmethod
    def _space_separated(cls, value: Any) -> Any:
        return _split(value, None)

    @field_validator("return_to_allowlist", "risc_audiences", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "expected a URL starting with postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
        return value

    @field_validator(
        "auth_uri", "token_uri", "userinfo_uri", "revoke_uri", "jwks_uri", "gmail_api_base",
        "risc_api_base",
    )  # fmt: skip
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not _is_http_url(value):
            raise ValueError("expected an absolute http(s) URL")
        return value.rstrip("/") if value.endswith("/") else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in (
            "redis", "rediss", "unix",
        ):  # fmt: skip
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("redirect_uri")
    @classmethod
    def _redirect_uri(cls, value: str | None) -> str | None:
        if value is not None and not _is_http_url(value):
            raise ValueError("expected the absolute http(s) callback URL registered with Google")
        return value

    @field_validator("webhook_url", "discovery_url", "risc_configuration_url", "risc_receiver_url")
    @classmethod
    def _optional_http_url(cls, value: str | None) -> str | None:
        if value is not None and not _is_http_url(value):
            raise ValueError("expected an absolute http(s) URL")
        return value

    @field_validator("gmail_push_topic")
    @classmethod
    def _push_topic(cls, value: str | None) -> str | None:
        if value is not None and not _PUBSUB_TOPIC.match(value):
            raise ValueError("expected a Cloud Pub/Sub topic: projects/<project id>/topics/<name>")
        return value

    @field_validator("gmail_push_service_account")
    @classmethod
    def _push_service_account(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError(
                "expected the email of the service account the push subscription signs as"
            )
        return value

    @model_validator(mode="after")
    def _push_needs_its_authentication(self) -> Settings:
        # A push endpoint that cannot check who is calling it would accept anyone's pushes.
        if self.gmail_push_topic is not None and (
            not self.gmail_push_audience or self.gmail_push_service_account is None
        ):
            raise ValueError(
                f"{env_name('gmail_push_topic')}: needs {env_name('gmail_push_audience')} and "
                f"{env_name('gmail_push_service_account')} (the push subscription's OIDC "
                "audience and service account, which every push is checked against)"
            )
        if self.gmail_push_topic is not None and self.webhook_url is None:
            raise ValueError(
                f"{env_name('gmail_push_topic')}: needs {env_name('webhook_url')} (mailbox.changed "
                "notifications are delivered there)"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_the_refresh(self) -> Settings:
        # A replica cuts its refresh short before its lease runs out (LEASE_MARGIN_SECONDS
        # in services/refresh_leases.py), so two replicas never present one refresh token
        # at once; the retry budget must fit inside that.
        if self.refresh_lease_seconds < self.refresh_budget_seconds + 2:
            raise ValueError(
                f"{env_name('refresh_lease_seconds')}: must be at least "
                f"{env_name('refresh_budget_seconds')} + 2 ({self.refresh_budget_seconds + 2:g})"
            )
        return self

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> Settings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError(
                f"{env_name('webhook_secret')}: required when {env_name('webhook_url')} is set "
                "(notifications are signed with it)"
            )
        return self

    @field_validator("return_to_allowlist")
    @classmethod
    def _allowlist_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parts = urlsplit(entry)
            if not _is_http_url(entry) or parts.query or parts.fragment:
                raise ValueError(
                    "expected comma-separated http(s) URL prefixes (scheme, host and path)"
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _fill_from_client_secrets_file(cls, data: Any) -> Any:
        # Values set explicitly (environment, .env, arguments) win over the file.
        if not isinstance(data, dict) or not data.get("google_client_secrets_file"):
            return data
        web = _read_client_secrets(Path(data["google_client_secrets_file"]))
        filled = dict(data)
        redirect_uris = web.get("redirect_uris") or [None]
        from_file = {
            "google_client_id": web.get("client_id"),
            "google_client_secret": web.get("client_secret"),
            "redirect_uri": redirect_uris[0],
            "auth_uri": _LEGACY_GOOGLE_ENDPOINTS.get(web.get("auth_uri", ""), web.get("auth_uri")),
            "token_uri": _LEGACY_GOOGLE_ENDPOINTS.get(
                web.get("token_uri", ""), web.get("token_uri")
            ),
        }
        for field, value in from_file.items():
            if value and not filled.get(field):
                filled[field] = value
        return filled

    @model_validator(mode="after")
    def _issuer_to_discover_from(self) -> Settings:
        if self.discovery_document_url is not None and not _is_http_url(self.issuer):
            raise ValueError(
                f"{env_name('issuer')}: expected the provider's http(s) URL, its endpoints are "
                f"discovered from it (or set {env_name('discovery_url')}, or every endpoint)"
            )
        return self

    @property
    def discovery_document_url(self) -> str | None:
        """Where the provider's endpoints are discovered, or None when the settings name them.

        `TOKEN_BROKER_DISCOVERY_URL` if set; else, for an issuer other than Google's whose
        endpoints are not all set, `<issuer>/.well-known/openid-configuration`. Google's
        issuer alone keeps the built-in endpoints (no request at start).
        """
        if self.discovery_url is not None:
            return self.discovery_url
        every_endpoint = {"auth_uri", "token_uri", "userinfo_uri", "revoke_uri", "jwks_uri"}
        if (
            "issuer" in self.model_fields_set
            and not is_google_issuer(self.issuer)
            and not every_endpoint <= self.model_fields_set
        ):
            return self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        return None

    @property
    def gmail_push_enabled(self) -> bool:
        return self.gmail_push_topic is not None

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @property
    def effective_risc_configuration_url(self) -> str:
        """Google's RISC configuration document sits beside its OpenID discovery document
        (https://accounts.google.com/.well-known/risc-configuration); so does the sandbox's."""
        if self.risc_configuration_url is not None:
            return self.risc_configuration_url
        return self.issuer.rstrip("/") + "/.well-known/risc-configuration"

    @property
    def effective_risc_receiver_url(self) -> str | None:
        """Where Google is asked to send security events: the setting, else `/v1/risc` on the
        broker's public address (the redirect URI's)."""
        if self.risc_receiver_url is not None:
            return self.risc_receiver_url
        if not self.redirect_uri:
            return None
        parts = urlsplit(self.redirect_uri)
        return f"{parts.scheme}://{parts.netloc}/v1/risc"

    @property
    def risc_audience_set(self) -> frozenset[str]:
        """The client ids a security event token may be addressed to."""
        return frozenset({*([self.google_client_id] if self.google_client_id else []),
                          *self.risc_audiences})  # fmt: skip

    @property
    def access_log_active(self) -> bool:
        return self.is_development if self.access_log is None else self.access_log

    @property
    def keepalive_active(self) -> bool:
        """Keep-alive refresh runs unless switched off; off by default in development."""
        if self.keepalive_enabled is not None:
            return self.keepalive_enabled
        return not self.is_development

    @property
    def effective_log_format(self) -> Literal["json", "text"]:
        if self.log_format is not None:
            return self.log_format
        return "text" if self.is_development else "json"

    def serving_problems(self) -> list[str]:
        """What stops this configuration from serving OAuth and token requests."""
        problems: list[str] = []
        if self.encryption_keys is None and not self.is_development:
            problems.append(
                f"{env_name('encryption_keys')}: required outside development; expected "
                "comma-separated kid:base64(32 bytes) (make one with `token-broker keys generate`)"
            )
        if not self.google_client_id:
            problems.append(
                f"{env_name('google_client_id')}: required; set it or "
                f"{env_name('google_client_secrets_file')}"
            )
        if self.google_client_secret is None:
            problems.append(
                f"{env_name('google_client_secret')}: required; set it or "
                f"{env_name('google_client_secrets_file')}"
            )
        if not self.redirect_uri:
            problems.append(
                f"{env_name('redirect_uri')}: required; the callback URL registered with Google "
                "(or redirect_uris in the client secrets file)"
            )
        missing = missing_scopes(self.required_scopes, self.scopes)
        if missing:
            problems.append(
                f"{env_name('scopes')}: must include the required scopes {' '.join(missing)}"
            )
        return problems


def _read_client_secrets(path: Path) -> dict[str, Any]:
    variable = env_name("google_client_secrets_file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{variable}: no file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{variable}: {path} is not a readable JSON file ({type(error).__name__})"
        ) from None
    web = document.get("web") if isinstance(document, dict) else None
    if not isinstance(web, dict):
        raise ValueError(
            f'{variable}: {path} has no "web" object; expected Google\'s client_secrets.json '
            "for a web application"
        )
    return web


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and overrides, or a `ConfigurationError` per variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_input=False, include_url=False):
            location = item.get("loc") or ()
            message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
            if location:
                problems.append(f"{env_name(str(location[0]))}: {message}")
            else:
                problems.append(message)
        raise ConfigurationError(problems) from None
