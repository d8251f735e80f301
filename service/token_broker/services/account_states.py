"""Every change to an account's state, in one place: store a grant, record a refresh, mark
revoked, delete.

Each change runs inside the caller's transaction and writes, with it, everything that
must commit or fail together: the sealed secrets, the audit row, the webhook outbox
entry and the change notice other replicas listen for. Secrets are sealed and opened
only here (and re-sealed by key rotation), each bound to its table, column and row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import SecretStr
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.google.oauth import TokenGrant
from token_broker.kit.clock import utcnow
from token_broker.services.audit import Action, write_audit
from token_broker.services.webhooks import Webhooks
from token_broker.store.change_feed import CHANNEL, payload
from token_broker.store.mailbox_watches import MailboxWatchRepository
from token_broker.store.models import Account, AccountStatus
from token_broker.store.repositories import AccountRepository, ChangeNotices
from token_broker.store.sealing import Keyring

PROVIDER = "google"


class NoStoredRefreshToken(Exception):
    """The grant brought no refresh token and the account has none to keep."""

    def __init__(self, account_id: str | None) -> None:
        super().__init__("no refresh token to keep")
        self.account_id = account_id  # the stored account, if there is one


@dataclass(frozen=True)
class Identity:
    """Who consented, as the provider's ID token (or userinfo) says."""

    subject: str
    email: str | None  # normalised
    email_verified: bool


@dataclass(frozen=True)
class StoredGrant:
    account: Account
    reactivated: bool
    # Other accounts holding the same verified email: by-email lookups of it are now
    # ambiguous, so caches must drop them too.
    sharing_email: list[str]


class AccountStates:
    def __init__(self, keyring: Keyring, webhooks: Webhooks) -> None:
        self.keyring = keyring
        self.webhooks = webhooks

    # ------------------------------------------------------------------ secrets

    def refresh_token(self, account: Account) -> SecretStr | None:
        if account.refresh_token is None:
            return None
        return self.keyring.open(
            account.refresh_token, column=Account.REFRESH_TOKEN, row=account.id
        )

    def access_token(self, account: Account) -> SecretStr | None:
        if account.access_token is None:
            return None
        return self.keyring.open(account.access_token, column=Account.ACCESS_TOKEN, row=account.id)

    def _seal_tokens(self, account: Account, grant: TokenGrant) -> None:
        account.access_token = self.keyring.seal(
            grant.access_token.get_secret_value(), column=Account.ACCESS_TOKEN, row=account.id
        )
        if grant.refresh_token is not None:
            account.refresh_token = self.keyring.seal(
                grant.refresh_token.get_secret_value(),
                column=Account.REFRESH_TOKEN,
                row=account.id,
            )
        account.access_token_expires_at = grant.expires_at

    # ------------------------------------------------------------------ changes

    async def store_grant(
        self,
        session: AsyncSession,
        *,
        identity: Identity,
        grant: TokenGrant,
        scopes: tuple[str, ...],
        client_id: str | None,
        authorization_id: str | None,
    ) -> StoredGrant:
        """Upsert the account by (provider, subject) with a freshly consented grant.

        No refresh token in the grant keeps the stored one; with none stored (or a
        revoked account, whose old token is worthless) it raises `NoStoredRefreshToken`
        and the caller's transaction rolls back.
        """
        now = utcnow()
        accounts = AccountRepository(session)
        account = await accounts.by_subject(PROVIDER, identity.subject)
        if account is not None:
            account = await accounts.get(account.id, for_update=True)
        stored_before = account is not None
        if account is None:
            account = Account(
                id=str(uuid.uuid4()), provider=PROVIDER, subject=identity.subject,
                created_at=now, updated_at=now,
            )  # fmt: skip
        reactivated = account.status == AccountStatus.REVOKED
        if reactivated:
            # A dead grant's refresh token is worthless; only a new one revives it.
            account.refresh_token = None
        if grant.refresh_token is None and account.refresh_token is None:
            raise NoStoredRefreshToken(account.id if stored_before else None)
        self._seal_tokens(account, grant)
        if identity.email is not None:
            # Only a consent changes an account's email; refreshes never do, so they
            # never change which account an email address reaches.
            account.email = identity.email
            account.email_verified = identity.email_verified
        account.scopes = " ".join(sorted(scopes))
        account.status = AccountStatus.ACTIVE
        account.last_refresh_error = None
        account.last_refreshed_at = now
        account.updated_at = now
        await accounts.save(account)
        await write_audit(
            session, Action.ACCOUNT_CONNECTED, "ok", client_id=client_id, account_id=account.id,
            detail={"new_refresh_token": grant.refresh_token is not None,
                    "authorization": authorization_id},
        )  # fmt: skip
        if reactivated:
            await self.webhooks.account_changed(
                session, "account.reactivated", account, "reconnected",
                authorization_id=authorization_id,
            )  # fmt: skip
        await self.webhooks.account_changed(
            session, "account.connected", account, None, authorization_id=authorization_id
        )
        notices = ChangeNotices(session)
        await notices.send(CHANNEL, payload("account", account.id))
        sharing = []
        if account.email_verified and account.email is not None:
            holders = await accounts.with_verified_email(PROVIDER, account.email)
            sharing = [holder.id for holder in holders if holder.id != account.id]
            for other in sharing:
                await notices.send(CHANNEL, payload("account", other))
        return StoredGrant(account, reactivated, sharing)

    async def record_refresh(
        self,
        session: AsyncSession,
        account: Account,
        grant: TokenGrant,
        *,
        trigger: str,
        forced: bool = False,
    ) -> None:
        """A refresh succeeded: the new access token (and a rotated refresh token) stored.

        `forced`: a caller's force_refresh made it (the forced-refresh throttle's clock)."""
        self._seal_tokens(account, grant)
        account.last_refreshed_at = grant.received_at
        if forced:
            account.forced_refresh_at = grant.received_at
        account.last_refresh_error = None
        account.updated_at = utcnow()
        await AccountRepository(session).save(account)
        await write_audit(
            session, Action.REFRESH, "ok", account_id=account.id,
            detail={"rotated_refresh_token": grant.refresh_token is not None, "trigger": trigger},
        )  # fmt: skip

    async def mark_revoked(
        self, session: AsyncSession, account: Account, *, error: str, trigger: str
    ) -> None:
        """The grant is dead: its secrets erased, the account revoked, everyone told."""
        account.status = AccountStatus.REVOKED
        account.refresh_token = None
        account.access_token = None
        account.access_token_expires_at = None
        account.last_refresh_error = error
        account.updated_at = utcnow()
        await AccountRepository(session).save(account)
        await write_audit(
            session, Action.REFRESH, "failed", account_id=account.id,
            detail={"class": "permanent", "error": error, "trigger": trigger},
        )  # fmt: skip
        await write_audit(session, Action.ACCOUNT_REVOKED, error, account_id=account.id)
        # A dead grant cannot call users.stop: its watch is never renewed, its pushes dropped.
        await MailboxWatchRepository(session).stop(account.id, account.updated_at)
        await self.webhooks.account_changed(session, "account.revoked", account, error)
        await ChangeNotices(session).send(CHANNEL, payload("account", account.id))

    async def delete(
        self,
        session: AsyncSession,
        account: Account,
        *,
        client_id: str | None,
        upstream_revoked: bool,
    ) -> None:
        await AccountRepository(session).delete(account)
        await MailboxWatchRepository(session).delete(account.id)
        await write_audit(
            session, Action.ACCOUNT_DELETED, "ok", client_id=client_id, account_id=account.id,
            detail={"upstream_revoked": upstream_revoked},
        )  # fmt: skip
        await ChangeNotices(session).send(CHANNEL, payload("account", account.id))
