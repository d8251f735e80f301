"""Every change to an account's state, in one place: store a grant, record a refresh, record
a refused refresh (with its reason, services/grant_health.py), revoke, suspend and lift a
suspension, note a security event or an expiring grant, delete.

Each change runs inside the caller's transaction and writes, with it, everything that
must commit or fail together: the sealed secrets, the audit row, the webhook outbox
entry and the change notice other replicas listen for. Secrets are sealed and opened
only here (and re-sealed by key rotation), each bound to its table, column and row.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.google.oauth import TokenGrant
from token_broker.kit.clock import rfc3339, utcnow
from token_broker.observability.metrics import Metrics
from token_broker.scopes import google_names as google_scopes
from token_broker.services.audit import Action, write_audit
from token_broker.services.grant_health import (
    RECENT_SECURITY_EVENT,
    GrantFacts,
    RefusedRefresh,
    SecurityEvent,
    SecurityEventKind,
    StatusReason,
    Verdict,
    classify,
    grant_expiry,
)
from token_broker.services.webhooks import EventType, Webhooks
from token_broker.store.change_feed import CHANNEL, payload
from token_broker.store.mailbox_watches import MailboxWatchRepository
from token_broker.store.models import Account, AccountStatus
from token_broker.store.repositories import AccountRepository, ChangeNotices, RiscEventRepository
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
    recovered_from: str | None = None  # the reason the account was revoked, expiring, ...


def refresh_token_identifiers(token: str) -> tuple[str, str]:
    """Google's identifiers of a refresh token in Cross-Account Protection events
    (`hash_base64_sha512_sha512`: base64 of the SHA-512 of its SHA-512; `prefix`: its first
    16 characters, kept here only as their SHA-256), never the token itself."""
    inner = hashlib.sha512(token.encode()).digest()
    double = base64.b64encode(hashlib.sha512(inner).digest()).decode()
    return double, hashlib.sha256(token[:16].encode()).hexdigest()


class AccountStates:
    def __init__(
        self,
        keyring: Keyring,
        webhooks: Webhooks,
        *,
        publishing_status: str = "production",
        metrics: Metrics | None = None,
    ) -> None:
        self.keyring = keyring
        self.webhooks = webhooks
        self.publishing_status = publishing_status
        self.metrics = metrics

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
            self._identify_refresh_token(account, grant.refresh_token)
        elif account.refresh_token_sha512x2 is None:
            # Stored by a version that kept no identifiers: computed at its first refresh.
            stored = self.refresh_token(account)
            if stored is not None:
                self._identify_refresh_token(account, stored)
        account.access_token_expires_at = grant.expires_at

    @staticmethod
    def _identify_refresh_token(account: Account, token: SecretStr) -> None:
        double, prefix = refresh_token_identifiers(token.get_secret_value())
        account.refresh_token_sha512x2 = double
        account.refresh_token_prefix_sha256 = prefix

    @staticmethod
    def _erase_secrets(account: Account, *, keep_refresh_token: bool = False) -> None:
        account.access_token = None
        account.access_token_expires_at = None
        if not keep_refresh_token:
            account.refresh_token = None
            account.refresh_token_sha512x2 = None
            account.refresh_token_prefix_sha256 = None

    def _set_status(
        self, account: Account, status: str, reason: str | None, detail: str | None, now: datetime
    ) -> None:
        if (account.status, account.status_reason) != (status, reason):
            account.status_changed_at = now
            if self.metrics is not None:
                self.metrics.status_changes.labels(status, reason or "none").inc()
        account.status = status
        account.status_reason = reason
        account.status_detail = detail
        account.updated_at = now

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
        requested: Sequence[str] = (),
    ) -> StoredGrant:
        """Upsert the account by (provider, subject) with a freshly consented grant.

        No refresh token in the grant keeps the stored one; with none stored (or a
        revoked account, whose old token is worthless) it raises `NoStoredRefreshToken`
        and the caller's transaction rolls back. `scopes` are those Google granted;
        `requested` those the flow asked for (Google's testing-status expiry counts them).
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
        recovered_from = _trouble(account) if stored_before else None
        if reactivated:
            # A dead grant's refresh token is worthless; only a new one revives it.
            self._erase_secrets(account)
        if grant.refresh_token is None and account.refresh_token is None:
            raise NoStoredRefreshToken(account.id if stored_before else None)
        self._seal_tokens(account, grant)
        if grant.refresh_token is not None:
            account.newer_refresh_tokens = 0
        if identity.email is not None:
            # Only a consent changes an account's email; refreshes never do, so they
            # never change which account an email address reaches.
            account.email = identity.email
            account.email_verified = identity.email_verified
        account.scopes = " ".join(sorted(scopes))
        account.granted_at = now
        account.grant_expires_at, account.grant_expiry_reason = grant_expiry(
            [*requested, *scopes],
            consented_at=now,
            publishing_status=self.publishing_status,
            refresh_token_expires_at=grant.refresh_token_expires_at,
        )
        account.expiring_notified_at = None
        self._set_status(account, AccountStatus.ACTIVE, None, None, now)
        account.last_refresh_error = None
        account.last_refreshed_at = now
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
        if recovered_from is not None:
            await self.webhooks.account_changed(
                session, "account.recovered", account, "reconnected",
                authorization_id=authorization_id, previous_reason=recovered_from,
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
        return StoredGrant(account, reactivated, sharing, recovered_from)

    async def record_refresh(
        self,
        session: AsyncSession,
        account: Account,
        grant: TokenGrant,
        *,
        trigger: str,
        forced: bool = False,
    ) -> None:
        """A refresh succeeded: the new access token (and a rotated refresh token) stored,
        with the scopes Google says the grant holds.

        `forced`: a caller's force_refresh made it (the forced-refresh throttle's clock)."""
        now = utcnow()
        self._seal_tokens(account, grant)
        if grant.scopes is not None:
            account.scopes = " ".join(sorted(google_scopes(grant.scopes)))
        ends = grant.refresh_token_expires_at
        if ends is not None and (
            account.grant_expires_at is None
            or account.grant_expiry_reason == StatusReason.TIME_LIMITED_ACCESS_EXPIRED
            or ends < account.grant_expires_at
        ):
            account.grant_expires_at = ends
            account.grant_expiry_reason = StatusReason.TIME_LIMITED_ACCESS_EXPIRED
        account.last_refreshed_at = grant.received_at
        if forced:
            account.forced_refresh_at = grant.received_at
        account.last_refresh_error = None
        signed_in_again = account.status_reason == StatusReason.SESSION_POLICY
        if signed_in_again:
            self._set_status(account, AccountStatus.ACTIVE, None, None, now)
        account.updated_at = now
        await AccountRepository(session).save(account)
        await write_audit(
            session, Action.REFRESH, "ok", account_id=account.id,
            detail={"rotated_refresh_token": grant.refresh_token is not None, "trigger": trigger},
        )  # fmt: skip
        if signed_in_again:
            await self.webhooks.account_changed(
                session, "account.recovered", account, "refreshed",
                previous_reason=StatusReason.SESSION_POLICY,
            )  # fmt: skip

    async def refused(
        self, session: AsyncSession, account: Account, refusal: RefusedRefresh, *, trigger: str
    ) -> Verdict:
        """A refresh was refused: classified (services/grant_health.py) and recorded. A dead
        grant revokes the account; a session policy leaves it active, asking for sign-in."""
        now = utcnow()
        recent = await RiscEventRepository(session).of_account(
            account.id, since=now - RECENT_SECURITY_EVENT
        )
        verdict = classify(
            refusal,
            GrantFacts(
                now=now,
                scopes=account.scope_list,
                granted_at=account.granted_at,
                last_used_at=account.last_refreshed_at,
                expires_at=account.grant_expires_at,
                expiry_reason=account.grant_expiry_reason,
                newer_refresh_tokens=account.newer_refresh_tokens,
                security_events=[
                    SecurityEvent(kind, event.issued_at)
                    for event in recent
                    for kind in event.event_types.split()
                ],
            ),
        )
        if self.metrics is not None:
            self.metrics.refusals.labels(verdict.reason).inc()
        account.last_refresh_error = refusal.error
        cause: dict[str, object] = {
            "class": "permanent" if verdict.ends_grant else "session_policy",
            "error": refusal.error,
            "trigger": trigger,
            "reason": verdict.reason.value,
        }
        await write_audit(session, Action.REFRESH, "failed", account_id=account.id, detail=cause)
        if verdict.ends_grant:
            await self.revoke(
                session, account, reason=verdict.reason, detail=verdict.detail, cause=cause
            )
        elif account.status_reason != verdict.reason:
            self._set_status(account, AccountStatus.ACTIVE, verdict.reason, verdict.detail, now)
            await AccountRepository(session).save(account)
            await self.webhooks.account_changed(
                session, "account.signin_required", account, verdict.reason,
                detail=verdict.detail,
            )  # fmt: skip
        return verdict

    async def revoke(
        self,
        session: AsyncSession,
        account: Account,
        *,
        reason: str,
        detail: str,
        cause: dict[str, object],
    ) -> None:
        """The grant is dead: its secrets erased, the account revoked, everyone told.

        `cause` is audited with it (a refused refresh, or a security event).
        """
        self._erase_secrets(account)
        self._set_status(account, AccountStatus.REVOKED, reason, detail, utcnow())
        account.expiring_notified_at = None
        await AccountRepository(session).save(account)
        await write_audit(
            session, Action.ACCOUNT_REVOKED, reason, account_id=account.id, detail=cause
        )
        # A dead grant cannot call users.stop: its watch is never renewed, its pushes dropped.
        await MailboxWatchRepository(session).stop(account.id, account.updated_at)
        await self.webhooks.account_changed(
            session, "account.revoked", account, reason, detail=detail
        )
        await ChangeNotices(session).send(CHANNEL, payload("account", account.id))

    async def suspend(
        self, session: AsyncSession, account: Account, *, reason: str, detail: str
    ) -> None:
        """Google disabled the Google account: no token until it is enabled again. Cached
        access tokens are dropped everywhere; the refresh token is kept for that day."""
        self._erase_secrets(account, keep_refresh_token=True)
        self._set_status(account, AccountStatus.SUSPENDED, reason, detail, utcnow())
        await self._changed(session, account, "account.suspended", reason, Action.ACCOUNT_SUSPENDED)

    async def lift_suspension(self, session: AsyncSession, account: Account) -> None:
        """Google enabled the Google account again: the kept grant serves once more."""
        previous = account.status_reason
        self._set_status(account, AccountStatus.ACTIVE, None, None, utcnow())
        await self._changed(
            session, account, "account.unsuspended", previous, Action.ACCOUNT_UNSUSPENDED,
        )  # fmt: skip

    async def _changed(
        self,
        session: AsyncSession,
        account: Account,
        event: EventType,
        reason: str | None,
        action: Action,
    ) -> None:
        await AccountRepository(session).save(account)
        await write_audit(session, action, reason or "ok", account_id=account.id)
        await self.webhooks.account_changed(
            session, event, account, reason, detail=account.status_detail
        )
        await ChangeNotices(session).send(CHANNEL, payload("account", account.id))

    async def security_event(
        self, session: AsyncSession, account: Account, kind: SecurityEventKind
    ) -> None:
        """A security event that changes no status: audited and sent on as a webhook."""
        events: dict[SecurityEventKind, EventType] = {
            SecurityEventKind.CREDENTIAL_CHANGE_REQUIRED: "account.credential_change_required",
            SecurityEventKind.SESSIONS_REVOKED: "account.sessions_revoked",
        }
        await write_audit(session, Action.SECURITY_EVENT, kind.value, account_id=account.id)
        await self.webhooks.account_changed(session, events[kind], account, kind.value)

    async def expiring(self, session: AsyncSession, account: Account) -> bool:
        """Note once that the account's grant ends soon (the `account.expiring` webhook).

        False when another replica (or an earlier pass) already did.
        """
        if not await AccountRepository(session).claim_expiry_notice(account.id, utcnow()):
            return False
        await self.webhooks.account_changed(
            session, "account.expiring", account, account.grant_expiry_reason,
            grant_expires_at=rfc3339(account.grant_expires_at)
            if account.grant_expires_at else None,
        )  # fmt: skip
        return True

    async def grant_dropped(self, session: AsyncSession, subject: str) -> None:
        """Google issued a refresh token for `subject` that the broker did not keep (a consent
        that failed a check): Google's per-account limit counts it (reason token_limit)."""
        await AccountRepository(session).count_newer_refresh_token(PROVIDER, subject)

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


def _trouble(account: Account) -> str | None:
    """The reason an account needed its user back, if it did: what a reconnect recovers from."""
    if account.status != AccountStatus.ACTIVE:
        return account.status_reason or StatusReason.UNKNOWN_INVALID_GRANT
    if account.status_reason is not None:
        return account.status_reason  # active, but asked to sign in again
    if account.expiring_notified_at is not None:
        return account.grant_expiry_reason
    return None
