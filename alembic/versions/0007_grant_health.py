"""grant health: why an account's status is what it is, the grant's known end, suspended
accounts, refresh-token identifiers, received security events, per-flow required scopes

Revision ID: 0007
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("status_reason", sa.String(40), nullable=True))
        batch.add_column(sa.Column("status_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("granted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("grant_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("grant_expiry_reason", sa.String(40), nullable=True))
        batch.add_column(
            sa.Column("expiring_notified_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("newer_refresh_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("refresh_token_sha512x2", sa.String(100), nullable=True))
        batch.add_column(sa.Column("refresh_token_prefix_sha256", sa.String(64), nullable=True))
    op.create_index("ix_accounts_status_reason", "accounts", ["status_reason"])
    op.create_index("ix_accounts_grant_expires_at", "accounts", ["grant_expires_at"])
    op.create_index("ix_accounts_refresh_token_sha512x2", "accounts", ["refresh_token_sha512x2"])
    op.create_index(
        "ix_accounts_refresh_token_prefix_sha256", "accounts", ["refresh_token_prefix_sha256"]
    )
    # What earlier versions knew: the last change of the row, its creation as the earliest
    # possible consent, and for revoked accounts the refresh error they recorded, which
    # Google gives for every cause alike (hence unknown_invalid_grant). Refresh-token
    # identifiers need the keyring; accounts get them at their next refresh.
    op.execute("UPDATE accounts SET status_changed_at = updated_at, granted_at = created_at")
    op.execute(
        "UPDATE accounts SET status_reason = 'unknown_invalid_grant', status_detail = "
        "'Revoked before this version recorded reasons; the refresh was refused with ' || "
        "coalesce(last_refresh_error, 'an error') || '.' WHERE status = 'revoked'"
    )

    with op.batch_alter_table("oauth_states") as batch:
        batch.add_column(sa.Column("required_scopes", sa.Text(), nullable=True))

    op.create_table(
        "risc_events",
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=True),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_risc_events"),
    )
    op.create_index("ix_risc_events_received_at", "risc_events", ["received_at"])
    op.create_index("ix_risc_events_account_id", "risc_events", ["account_id"])


def downgrade() -> None:
    op.drop_table("risc_events")
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("required_scopes")
    for index in (
        "ix_accounts_refresh_token_prefix_sha256",
        "ix_accounts_refresh_token_sha512x2",
        "ix_accounts_grant_expires_at",
        "ix_accounts_status_reason",
    ):
        op.drop_index(index, table_name="accounts")
    # Plain ALTER TABLE (SQLite 3.35+ drops columns in place): batch mode would copy the
    # table on SQLite and lose its expression and partial indexes.
    for column in (
        "refresh_token_prefix_sha256",
        "refresh_token_sha512x2",
        "newer_refresh_tokens",
        "expiring_notified_at",
        "grant_expiry_reason",
        "grant_expires_at",
        "granted_at",
        "status_changed_at",
        "status_detail",
        "status_reason",
    ):
        op.drop_column("accounts", column)
