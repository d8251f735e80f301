"""Connected accounts: read by subject or email, list in pages, delete (revoking upstream)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from service.audit import Action, audit_event
from service.crypto import Keyring
from service.db import Database
from service.errors import AccountNotFound, InvalidCursor
from service.events import CHANNEL, ChangeFeed, payload
from service.google.oauth import OAuthClient
from service.google.transport import UpstreamProtocolError
from service.models import Account
from service.repositories import AccountRepository, AuditRepository, ChangeNotices
from service.retry import TransientError

PROVIDER = "google"

log = logging.getLogger("token_broker.accounts")


def encode_cursor(account: Account) -> str:
    raw = json.dumps([account.created_at.isoformat(), account.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, account_id = json.loads(base64.urlsafe_b64decode(padded))
        uuid.UUID(account_id)
        return datetime.fromisoformat(created_at), str(account_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, AttributeError):
        raise InvalidCursor() from None


@dataclass(frozen=True)
class Deletion:
    account_id: str
    upstream_revoked: bool


class AccountService:
    def __init__(
        self, database: Database, *, keyring: Keyring, oauth: OAuthClient, changes: ChangeFeed
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.oauth = oauth
        self.changes = changes

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

    async def delete(self, reference: str, *, client_id: str | None) -> Deletion:
        """Revoke the grant upstream (best effort), then delete the account and its secrets."""
        account = await self.get(reference)
        upstream_revoked = False
        if account.refresh_token is not None:
            token = self.keyring.open(
                account.refresh_token, column=Account.REFRESH_TOKEN, row=account.id
            )
            try:
                upstream_revoked = await self.oauth.revoke(token)
            except (TransientError, UpstreamProtocolError) as error:
                log.warning("upstream revoke failed (%s); deleting anyway", error)
        async with self.database.transaction() as session:
            accounts = AccountRepository(session)
            current = await accounts.get(account.id, for_update=True)
            if current is None:
                raise AccountNotFound()
            await accounts.delete(current)
            await AuditRepository(session).add_many(
                [
                    audit_event(
                        Action.ACCOUNT_DELETED,
                        "ok",
                        client_id=client_id,
                        account_id=account.id,
                        detail={"upstream_revoked": upstream_revoked},
                    )
                ]
            )
            await ChangeNotices(session).send(CHANNEL, payload("account", account.id))
        self.changes.changed("account", account.id)
        return Deletion(account.id, upstream_revoked)
