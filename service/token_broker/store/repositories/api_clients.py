"""API clients and their keys.

Works inside the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.store.models import (
    ApiClient,
)


class ApiClientRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, client: ApiClient) -> None:
        self.session.add(client)
        await self.session.flush()

    async def by_key_hash(self, key_hash: str) -> ApiClient | None:
        """The client whose current key, or key replaced by a rotation, has this hash."""
        result = await self.session.exec(
            select(ApiClient).where(
                sa.or_(
                    col(ApiClient.key_hash) == key_hash,
                    col(ApiClient.previous_key_hash) == key_hash,
                )
            )
        )
        return result.first()

    async def by_name(self, name: str) -> ApiClient | None:
        result = await self.session.exec(select(ApiClient).where(ApiClient.name == name))
        return result.first()

    async def all(self) -> Sequence[ApiClient]:
        result = await self.session.exec(select(ApiClient).order_by(col(ApiClient.created_at)))
        return result.all()

    async def save(self, client: ApiClient) -> None:
        self.session.add(client)
        await self.session.flush()

    async def delete(self, client: ApiClient) -> None:
        await self.session.delete(client)
        await self.session.flush()
