"""connect trust: authorization outcomes, bound states with a nonce, verified emails

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def upgrade() -> None:
    op.create_table(
        "authorizations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("client_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=True),
        sa.Column("account_subject", sa.String(255), nullable=True),
        sa.Column("account_email", sa.String(320), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_authorizations"),
    )
    op.create_index("ix_authorizations_created_at", "authorizations", ["created_at"])

    with op.batch_alter_table("oauth_states") as batch:
        batch.add_column(sa.Column("nonce_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("authorization_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("account_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("subject", sa.String(255), nullable=True))
    _give_live_states_an_authorization()

    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("email_verified", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Emails are stored normalised: trimmed, ASCII letters lower-cased (as the broker does).
    # Whether an address was verified was never recorded, so none counts as verified until
    # its account connects again: until then those accounts answer by subject only.
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        normalised = f"translate(btrim(email), '{ASCII_UPPER}', '{ASCII_UPPER.lower()}')"
    else:
        normalised = "lower(trim(email))"  # SQLite's lower() folds ASCII only
    op.execute(f"UPDATE accounts SET email = {normalised} WHERE email IS NOT NULL")  # noqa: S608
    op.create_index(
        "ix_accounts_verified_email",
        "accounts",
        ["provider", "email"],
        postgresql_where=sa.text("email_verified"),
        sqlite_where=sa.text("email_verified"),
    )


def _give_live_states_an_authorization() -> None:
    """Flows in progress during the upgrade finish with an id and an outcome like any other."""
    bind = op.get_bind()
    states = sa.table(
        "oauth_states",
        sa.column("state_hash", sa.String),
        sa.column("client_id", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("expires_at", sa.DateTime(timezone=True)),
        sa.column("consumed_at", sa.DateTime(timezone=True)),
        sa.column("authorization_id", sa.String),
    )
    authorizations = sa.table(
        "authorizations",
        sa.column("id", sa.String),
        sa.column("client_id", sa.String),
        sa.column("status", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    live = bind.execute(
        sa.select(
            states.c.state_hash, states.c.client_id, states.c.created_at, states.c.expires_at
        ).where(states.c.consumed_at.is_(None))
    ).all()
    for state_hash, client_id, created_at, expires_at in live:
        authorization_id = str(uuid.uuid4())
        bind.execute(
            sa.insert(authorizations).values(
                id=authorization_id,
                client_id=client_id,
                status="pending",
                created_at=created_at,
                expires_at=expires_at,
            )
        )
        bind.execute(
            sa.update(states)
            .where(states.c.state_hash == state_hash)
            .values(authorization_id=authorization_id)
        )


def downgrade() -> None:
    op.drop_index("ix_accounts_verified_email", table_name="accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("email_verified")
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("subject")
        batch.drop_column("account_id")
        batch.drop_column("authorization_id")
        batch.drop_column("nonce_hash")
    op.drop_table("authorizations")
