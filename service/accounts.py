"""Reading connected accounts: by subject or email, and pages of them."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from service.db import Database
from service.errors import AccountNotFound, InvalidCursor
from service.models import Account
from service.repositories import AccountRepository

PROVIDER = "google"


def encode_cursor(account: Account) -> str:
    raw = json.dumps([account.created_at.isoformat(), account.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, account_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created_at), str(account_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor() from None


class AccountService:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, reference: str) -> Account:
        async with self.database.transaction() as session:
            account = await AccountRepository(session).resolve(PROVIDER, reference)
        if account is None:
            raise AccountNotFound()
        return account

    async def page(
        self, *, email: str | None, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[Account], str | None]:
        after = decode_cursor(cursor) if cursor else None
        async with self.database.transaction() as session:
            rows = list(
                await AccountRepository(session).page(
                    email=email, status=status, after=after, limit=limit + 1
                )
            )
        if len(rows) > limit:
            return rows[:limit], encode_cursor(rows[limit - 1])
        return rows, None
