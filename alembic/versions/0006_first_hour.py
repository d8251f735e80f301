"""first hour: rotating API client keys with an overlap; replica heartbeats with their key ids

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("previous_key_hash", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("previous_key_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.create_unique_constraint("uq_api_clients_previous_key_hash", ["previous_key_hash"])

    op.create_table(
        "replicas",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("key_ids", sa.Text(), nullable=False),
        sa.Column("primary_key_id", sa.String(40), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replicas"),
    )
    op.create_index("ix_replicas_last_seen_at", "replicas", ["last_seen_at"])


def downgrade() -> None:
    op.drop_table("replicas")
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_constraint("uq_api_clients_previous_key_hash", type_="unique")
        batch.drop_column("previous_key_expires_at")
        batch.drop_column("previous_key_hash")
