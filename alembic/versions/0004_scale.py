"""scale: refresh leases on accounts; indexes for the account walk and the keep-alive sweep

Revision ID: 0004
Revises: 0006
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LAST_USED = sa.text("coalesce(last_refreshed_at, created_at)")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("refresh_lease_id", sa.String(36), nullable=True))
        batch.add_column(
            sa.Column("refresh_lease_until", sa.DateTime(timezone=True), nullable=True)
        )
    # (status) alone is a prefix of (status, created_at, id): one index fewer to write.
    op.drop_index("ix_accounts_status", table_name="accounts")
    op.create_index("ix_accounts_created_at_id", "accounts", ["created_at", "id"])
    op.create_index("ix_accounts_status_created_at_id", "accounts", ["status", "created_at", "id"])
    op.create_index("ix_accounts_status_last_used", "accounts", [sa.column("status"), LAST_USED])


def downgrade() -> None:
    op.drop_index("ix_accounts_status_last_used", table_name="accounts")
    op.drop_index("ix_accounts_status_created_at_id", table_name="accounts")
    op.drop_index("ix_accounts_created_at_id", table_name="accounts")
    op.create_index("ix_accounts_status", "accounts", ["status"])
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("refresh_lease_until")
        batch.drop_column("refresh_lease_id")
