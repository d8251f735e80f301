"""mailbox changes: Gmail watches with their coalescing windows, and push receipts

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_watches",
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("history_id", sa.String(20), nullable=True),
        sa.Column("pending_history_id", sa.String(20), nullable=True),
        sa.Column("pending_trigger", sa.String(16), nullable=True),
        sa.Column("window_ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renew_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heard_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_push_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name="pk_mailbox_watches"),
    )
    op.create_index("ix_mailbox_watches_window_ends_at", "mailbox_watches", ["window_ends_at"])
    op.create_index("ix_mailbox_watches_renew_at", "mailbox_watches", ["renew_at"])
    op.create_index("ix_mailbox_watches_heard_at", "mailbox_watches", ["heard_at"])
    op.create_table(
        "gmail_push_receipts",
        sa.Column("message_id", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="pk_gmail_push_receipts"),
    )
    op.create_index("ix_gmail_push_receipts_received_at", "gmail_push_receipts", ["received_at"])


def downgrade() -> None:
    op.drop_table("gmail_push_receipts")
    op.drop_table("mailbox_watches")
