"""Connect flows: one-time OAuth states and the authorizations they complete.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.models import (
    Authorization,
    OAuthState,
)


class OAuthStateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, state: OAuthState) -> None:
        self.session.add(state)
        await self.session.flush()

    async def consume(self, state_hash: str, now: datetime) -> OAuthState | None:
        """Mark a live state used and return it; None if unknown, used or expired.

        One UPDATE ... RETURNING, so two callbacks racing with the same state cannot
        both get it.
        """
        statement = (
            sa.update(OAuthState)
            .where(
                col(OAuthState.state_hash) == state_hash,
                col(OAuthState.consumed_at).is_(None),
                col(OAuthState.expires_at) > now,
            )
            .values(consumed_at=now)
            .returning(*OAuthState.__table__.columns)  # type: ignore[attr-defined]
        )
        connection = await self.session.connection()
        row = (await connection.execute(statement)).mappings().first()
        return OAuthState.model_validate(dict(row)) if row is not None else None

    async def sealed_after(self, state_hash: str, limit: int) -> Sequence[sa.Row[str, str]]:
        """The next `limit` states' (state_hash, code_verifier), locked (key rotation)."""
        connection = await self.session.connection()
        result = await connection.execute(
            sa.select(col(OAuthState.state_hash), col(OAuthState.code_verifier))
            .where(col(OAuthState.state_hash) > state_hash)
            .order_by(col(OAuthState.state_hash))
            .limit(limit)
            .with_for_update()
        )
        return result.all()

    async def store_sealed(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write re-sealed verifiers, `{"row", "sealed_verifier"}` each, in one statement."""
        if rows:
            connection = await self.session.connection()
            await connection.execute(
                sa.update(OAuthState)
                .where(col(OAuthState.state_hash) == sa.bindparam("row"))
                .values(code_verifier=sa.bindparam("sealed_verifier")),
                list(rows),
            )

    async def purge_finished(self, now: datetime, *, limit: int) -> int:
        """Delete up to `limit` states that were used or have expired; how many went."""
        finished = (
            sa.select(col(OAuthState.state_hash))
            .where(
                sa.or_(col(OAuthState.consumed_at).is_not(None), col(OAuthState.expires_at) <= now)
            )
            .limit(limit)
        )
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(OAuthState).where(col(OAuthState.state_hash).in_(finished.scalar_subquery()))
        )
        return int(result.rowcount or 0)


class AuthorizationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, authorization: Authorization) -> None:
        self.session.add(authorization)
        await self.session.flush()

    async def of_client(self, authorization_id: str, client_id: str) -> Authorization | None:
        """The authorization if `client_id` started it; None otherwise (no one else may look)."""
        result = await self.session.exec(
            select(Authorization).where(
                Authorization.id == authorization_id, Authorization.client_id == client_id
            )
        )
        return result.first()

    async def get(self, authorization_id: str) -> Authorization | None:
        return await self.session.get(Authorization, authorization_id)

    async def save(self, authorization: Authorization) -> None:
        self.session.add(authorization)
        await self.session.flush()

    async def purge_created_before(self, before: datetime) -> int:
        connection = await self.session.connection()
        result = await connection.execute(
            sa.delete(Authorization).where(col(Authorization.created_at) < before)
        )
        return int(result.rowcount or 0)
