"""forced refreshes: when a caller's force_refresh last made a refresh, per account

The forced-refresh throttle counts from the last *forced* refresh, on every replica.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both databases (SQLite 3.35+ drops columns in place): batch mode
# would copy the table on SQLite and lose its expression and partial indexes.
def upgrade() -> None:
    op.add_column("accounts", sa.Column("forced_refresh_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("accounts", "forced_refresh_at")
