"""Database tables. Tables only: API shapes live in `web/schemas.py`.

Columns holding secrets contain sealed values (see `sealing.py`), never plaintext.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from token_broker.store.sealing import SecretColumn

# Deterministic constraint names, so later migrations (batch mode on SQLite) can name them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; the broker stores aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AccountStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    # Google disabled the Google account (Cross-Account Protection): no token is handed out
    # until it is enabled again; the grant is kept.
    SUSPENDED = "suspended"


_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_email(email: str) -> str:
    """How emails are stored and compared: trimmed, ASCII letters lower-cased.

    Only ASCII: Unicode case folding maps look-alikes onto plain letters (the Kelvin
    sign lower-cases to "k"), which would let one address pass for another.
    """
    return email.strip().translate(_ASCII_UPPER)


class Account(SQLModel, table=True):
    """A connected account. `refresh_lease_*` is the fleet-wide refresh single flight:
    a replica that refreshes holds the lease (its id, until when) while it calls the
    provider, outside any transaction; a lease with no holder is the cool-down after a
    failed refresh (see `services/tokens.py`)."""

    __tablename__ = "accounts"
    __table_args__ = (
        sa.UniqueConstraint("provider", "subject", name="uq_accounts_provider_subject"),
        # The by-email lookup: verified addresses only (see AccountRepository.resolve).
        sa.Index(
            "ix_accounts_verified_email",
            "provider",
            "email",
            postgresql_where=sa.text("email_verified"),
            sqlite_where=sa.text("email_verified"),
        ),
        # The keyset walk of GET /v1/accounts, with and without a status filter.
        sa.Index("ix_accounts_created_at_id", "created_at", "id"),
        sa.Index("ix_accounts_status_created_at_id", "status", "created_at", "id"),
        # The keep-alive sweep: active accounts by when their refresh token was last used.
        sa.Index(
            "ix_accounts_status_last_used",
            "status",
            sa.func.coalesce(sa.column("last_refreshed_at"), sa.column("created_at")),
        ),
        # Cross-Account Protection names a revoked refresh token by one of these two.
        sa.Index("ix_accounts_refresh_token_sha512x2", "refresh_token_sha512x2"),
        sa.Index("ix_accounts_refresh_token_prefix_sha256", "refresh_token_prefix_sha256"),
    )

    REFRESH_TOKEN: ClassVar[SecretColumn] = SecretColumn("accounts", "refresh_token")
    ACCESS_TOKEN: ClassVar[SecretColumn] = SecretColumn("accounts", "access_token")

    id: str = Field(primary_key=True, max_length=36)
    provider: str = Field(max_length=32)
    subject: str = Field(max_length=255)
    # Normalised (`normalize_email`); reachable by email only when the provider said verified.
    email: str | None = Field(default=None, max_length=320, index=True)
    email_verified: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    scopes: str = Field(default="", sa_type=sa.Text)
    status: str = Field(default=AccountStatus.ACTIVE, max_length=16)
    refresh_token: str | None = Field(default=None, sa_type=sa.Text)
    access_token: str | None = Field(default=None, sa_type=sa.Text)
    access_token_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    last_refreshed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # When a caller's force_refresh last made a refresh (the forced-refresh throttle).
    forced_refresh_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_refresh_error: str | None = Field(default=None, max_length=64)
    refresh_lease_id: str | None = Field(default=None, max_length=36)
    refresh_lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Grant health (services/grant_health.py): why the status is what it is, since when,
    # and what the broker knows of the grant's end.
    status_reason: str | None = Field(default=None, max_length=40, index=True)
    status_detail: str | None = Field(default=None, sa_type=sa.Text)
    status_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    granted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # the last consent
    grant_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    grant_expiry_reason: str | None = Field(default=None, max_length=40)
    expiring_notified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Refresh tokens Google issued for this subject after the stored one, which the broker
    # did not keep (a consent that failed a check): Google keeps the newest 100 per account
    # and client, so past 100 the stored one is gone (reason token_limit).
    newer_refresh_tokens: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Google's identifiers of the stored refresh token (base64 SHA-512 of its SHA-512; the
    # SHA-256 hex of its first 16 characters), never the token: how token-revoked finds it.
    refresh_token_sha512x2: str | None = Field(default=None, max_length=100)
    refresh_token_prefix_sha256: str | None = Field(default=None, max_length=64)

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class AuthorizationStatus(StrEnum):
    PENDING = "pending"
    CONNECTED = "connected"
    FAILED = "failed"


class Authorization(SQLModel, table=True):
    """One connect flow's id and outcome, readable by the API client that started it.

    Flows started from a re-authorization link get their row when they finish, so
    opening a link writes nothing that outlives its state. Rows are removed after
    TOKEN_BROKER_AUTHORIZATION_RETENTION_DAYS.
    """

    __tablename__ = "authorizations"

    id: str = Field(primary_key=True, max_length=36)
    client_id: str | None = Field(default=None, max_length=36)
    status: str = Field(default=AuthorizationStatus.PENDING, max_length=16)
    account_id: str | None = Field(default=None, max_length=36)
    account_subject: str | None = Field(default=None, max_length=255)
    account_email: str | None = Field(default=None, max_length=320)
    error_code: str | None = Field(default=None, max_length=64)
    error_detail: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OAuthState(SQLModel, table=True):
    """One trip to the provider: a one-time state, its PKCE verifier and OIDC nonce, and
    what the flow is bound to (its authorization, and for re-authorizations the account)."""

    __tablename__ = "oauth_states"

    CODE_VERIFIER: ClassVar[SecretColumn] = SecretColumn("oauth_states", "code_verifier")

    state_hash: str = Field(primary_key=True, max_length=64)
    code_verifier: str = Field(sa_type=sa.Text)
    nonce_hash: str | None = Field(default=None, max_length=64)
    authorization_id: str | None = Field(default=None, max_length=36)
    # Set for re-authorizations: only this account's subject may complete the flow.
    account_id: str | None = Field(default=None, max_length=36)
    subject: str | None = Field(default=None, max_length=255)
    login_hint: str | None = Field(default=None, max_length=320)
    scopes: str = Field(sa_type=sa.Text)
    # Scopes the flow must end with (incremental authorization: the ones it adds); None:
    # TOKEN_BROKER_REQUIRED_SCOPES.
    required_scopes: str | None = Field(default=None, sa_type=sa.Text)
    return_to: str | None = Field(default=None, sa_type=sa.Text)
    client_id: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    consumed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiClient(SQLModel, table=True):
    __tablename__ = "api_clients"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=100, unique=True)
    key_hash: str = Field(max_length=64, unique=True)
    permissions: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # After `clients rotate` the key it replaced keeps working until this time.
    previous_key_hash: str | None = Field(default=None, max_length=64, unique=True)
    previous_key_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def permission_list(self) -> list[str]:
        return self.permissions.split()


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    client_id: str | None = Field(default=None, max_length=36)
    action: str = Field(max_length=64, index=True)
    account_id: str | None = Field(default=None, max_length=36, index=True)
    outcome: str = Field(max_length=32)
    request_id: str | None = Field(default=None, max_length=64)
    detail: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)


class WebhookDelivery(SQLModel, table=True):
    """An account notification waiting to be (or already) delivered: the webhook outbox.

    Written in the same transaction as the change it reports, so none is lost; sent
    by a background dispatcher that leases one row at a time (any replica may send).
    """

    __tablename__ = "webhook_deliveries"

    id: str = Field(primary_key=True, max_length=36)
    event_type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_type=sa.JSON)
    created_at: datetime = Field(sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(sa_type=UTCDateTime, index=True)
    attempts: int = Field(default=0)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=200)


class Replica(SQLModel, table=True):
    """A serving broker process and the encryption keys it holds: its heartbeat.

    `keys rotate` reads these to refuse while a live replica cannot open what the new
    primary key seals.
    """

    __tablename__ = "replicas"

    id: str = Field(primary_key=True, max_length=36)
    host: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=32)
    key_ids: str = Field(sa_type=sa.Text)
    primary_key_id: str = Field(max_length=40)
    started_at: datetime = Field(sa_type=UTCDateTime)
    last_seen_at: datetime = Field(sa_type=UTCDateTime, index=True)

    @property
    def key_id_list(self) -> list[str]:
        return self.key_ids.split()


class WatchStatus(StrEnum):
    PENDING = "pending"  # users.watch to be called (new, or the last call failed)
    ACTIVE = "active"  # Gmail pushes this mailbox's changes until expires_at
    STOPPED = "stopped"  # the account was revoked: never renewed, pushes dropped


class MailboxWatch(SQLModel, table=True):
    """One account's Gmail watch, and what its webhook consumers have been told.

    `history_id` is the newest history id a `mailbox.changed` webhook carried (or, before
    any, the one the first watch answered): the fallback checks for changes after it.
    A push opens a coalescing window (`window_ends_at`); pushes inside it only raise
    `pending_history_id`, and one webhook goes out when it closes.
    """

    __tablename__ = "mailbox_watches"

    account_id: str = Field(primary_key=True, max_length=36)
    status: str = Field(default=WatchStatus.PENDING, max_length=16)
    history_id: str | None = Field(default=None, max_length=20)
    pending_history_id: str | None = Field(default=None, max_length=20)
    pending_trigger: str | None = Field(default=None, max_length=16)
    window_ends_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    renew_at: datetime = Field(sa_type=UTCDateTime, index=True)
    heard_at: datetime = Field(sa_type=UTCDateTime, index=True)
    last_push_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failures: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class GmailPushReceipt(SQLModel, table=True):
    """A Pub/Sub push the broker accepted: its message id, and a hash of the token it carried.

    The same message with the same token again is a replay (refused); with another token,
    Pub/Sub delivering it again (acknowledged, not acted on). Kept for a few hours.
    """

    __tablename__ = "gmail_push_receipts"

    message_id: str = Field(primary_key=True, max_length=100)
    token_hash: str = Field(max_length=64)
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)


class RiscEvent(SQLModel, table=True):
    """A security event token received from Google (Cross-Account Protection), by its `jti`.

    The primary key refuses a replayed token; rows older than the accepted age of a token
    (TOKEN_BROKER_RISC_MAX_AGE_SECONDS) are purged, since such tokens are refused anyway.
    Recent rows tell refresh failures their likely cause (services/grant_health.py).
    """

    __tablename__ = "risc_events"

    jti: str = Field(primary_key=True, max_length=255)
    issued_at: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)
    event_types: str = Field(sa_type=sa.Text)  # short names, space-separated
    account_id: str | None = Field(default=None, max_length=36, index=True)
    outcome: str = Field(max_length=64)
