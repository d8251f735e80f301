"""The Cross-Account Protection receiver: Google's security events, validated, then acted on.

`POST /v1/risc` carries one security event token. It is validated as Google's guide
requires (google/risc.py: signature by the RISC configuration's key set, `iss`, `aud`),
then bounded here: `iat` no older than TOKEN_BROKER_RISC_MAX_AGE_SECONDS and not in the
future, and a `jti` seen before is refused (the `risc_events` primary key, on every
replica). Refused tokens change nothing. An accepted one is acted on in the transaction
that records it, before the 202:

- tokens-revoked, and token-revoked naming the stored refresh token: the account is
  revoked (`revoked_by_user`) and its tokens erased;
- account-disabled: suspended (`account_disabled`, `_hijacking`, `_bulk_account` by its
  `reason`), the grant kept; account-enabled lifts the suspension;
- account-purged: revoked (`deleted_upstream`);
- account-credential-change-required, sessions-revoked: recorded, sent on as webhooks;
- verification: acknowledged, its `state` logged.

Every change reaches the other replicas' caches at once (NOTIFY, in the same transaction).
An event older than what it would undo changes nothing (`superseded`): tokens revoked
before the account's latest consent, a disable older than an enable already received, and
the reverse. Events for subjects the broker does not hold are recorded and acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import InvalidSecurityEvent
from token_broker.google.failures import UPSTREAM_FAILURES, problem_for
from token_broker.google.risc import EVENT_TYPES, RiscVerifier, SecurityEventTokenInvalid
from token_broker.kit.clock import utcnow
from token_broker.observability.metrics import Metrics
from token_broker.services.account_states import PROVIDER, AccountStates
from token_broker.services.grant_health import (
    RECENT_SECURITY_EVENT,
    SecurityEventKind,
    StatusReason,
    suspension_reason,
)
from token_broker.services.webhooks import Webhooks
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.models import Account, AccountStatus, RiscEvent
from token_broker.store.repositories import AccountRepository, RiscEventRepository

log = logging.getLogger("token_broker.risc")

FUTURE_LEEWAY = timedelta(seconds=60)  # clocks differ
# An event issued this soon before a consent may still be about the new grant (iat is
# whole seconds): only one issued earlier than that is superseded by the consent.
CONSENT_MARGIN = timedelta(seconds=1)
MAX_JTI_LENGTH = 255
# What undoes what: an event superseded by a later one of these, already received.
OPPOSITES = {
    SecurityEventKind.ACCOUNT_DISABLED: SecurityEventKind.ACCOUNT_ENABLED,
    SecurityEventKind.ACCOUNT_ENABLED: SecurityEventKind.ACCOUNT_DISABLED,
}


@dataclass(frozen=True)
class ParsedEvent:
    kind: SecurityEventKind | None  # None: a type the broker does not act on
    uri: str
    payload: dict[str, Any]


@dataclass
class Receipt:
    jti: str
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (event, outcome)
    changed: set[str] = field(default_factory=set)  # account ids


class RiscReceiver:
    def __init__(
        self,
        *,
        database: Database,
        account_states: AccountStates,
        verifier: RiscVerifier,
        changes: ChangeFeed,
        webhooks: Webhooks,
        metrics: Metrics,
        max_age_seconds: int,
        issuers: list[str],
    ) -> None:
        self.database = database
        self.account_states = account_states
        self.verifier = verifier
        self.changes = changes
        self.webhooks = webhooks
        self.metrics = metrics
        self.max_age = timedelta(seconds=max_age_seconds)
        # The ID tokens' issuers: a subject named by one of them is the broker's account.
        self.issuers = {issuer.rstrip("/") for issuer in issuers}

    async def receive(self, body: bytes) -> Receipt:
        """Validate, record and act on one security event token; InvalidSecurityEvent if refused."""
        try:
            claims = await self.verifier.verify(body.decode("ascii").strip())
            issued_at, jti, events = self._bounded(claims)
        except UnicodeDecodeError:
            raise self._refused(
                SecurityEventTokenInvalid("invalid_request", "the body is not a JWT")
            ) from None
        except SecurityEventTokenInvalid as error:
            raise self._refused(error) from None
        except UPSTREAM_FAILURES as error:
            # Google's configuration or keys could not be had: 503, and Google redelivers.
            raise problem_for(error, "risc") from None
        receipt = Receipt(jti)
        try:
            async with self.database.transaction() as session:
                events_row = RiscEvent(
                    jti=jti, issued_at=issued_at, received_at=utcnow(),
                    event_types=" ".join(event.kind or "unknown" for event in events),
                    outcome="received",
                )  # fmt: skip
                await RiscEventRepository(session).add(events_row)
                await RiscEventRepository(session).purge_received_before(
                    utcnow() - max(RECENT_SECURITY_EVENT, self.max_age + 2 * FUTURE_LEEWAY)
                )
                # Subjects name Google's issuer: the token's own (validated) or the ID tokens'.
                issuers = self.issuers | {str(claims["iss"]).rstrip("/")}
                for event in events:
                    outcome, account = await self._apply(session, event, issued_at, issuers)
                    receipt.outcomes.append((event.kind or event.uri, outcome))
                    if account is not None:
                        events_row.account_id = events_row.account_id or account.id
                        if outcome == "applied":
                            receipt.changed.add(account.id)
                events_row.outcome = " ".join(outcome for _, outcome in receipt.outcomes)[:64]
                await RiscEventRepository(session).save(events_row)
        except IntegrityError:
            raise self._refused(
                SecurityEventTokenInvalid("invalid_request", "this jti was received before")
            ) from None
        for account_id in receipt.changed:
            self.changes.changed("account", account_id)
        self.webhooks.wake()
        for kind, outcome in receipt.outcomes:
            self.metrics.risc_events.labels(kind, outcome).inc()
        log.info("security event %s received: %s", jti, receipt.outcomes)
        return receipt

    def _refused(self, error: SecurityEventTokenInvalid) -> InvalidSecurityEvent:
        self.metrics.risc_refused.labels(error.err).inc()
        log.warning("security event token refused (%s: %s)", error.err, error.description)
        return InvalidSecurityEvent(error.err, error.description)

    def _bounded(self, claims: dict[str, Any]) -> tuple[datetime, str, list[ParsedEvent]]:
        """iat within bounds, a jti, and events: the parts Google's signature vouches for."""
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise SecurityEventTokenInvalid("invalid_request", "iat is missing")
        try:
            issued_at = datetime.fromtimestamp(iat, UTC)
        except (OverflowError, OSError, ValueError):
            raise SecurityEventTokenInvalid("invalid_request", "iat is not a time") from None
        now = utcnow()
        if now - issued_at > self.max_age:
            raise SecurityEventTokenInvalid(
                "invalid_request", "stale: iat is older than TOKEN_BROKER_RISC_MAX_AGE_SECONDS"
            )
        if issued_at - now > FUTURE_LEEWAY:
            raise SecurityEventTokenInvalid("invalid_request", "iat is in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise SecurityEventTokenInvalid("invalid_request", "jti is missing")
        events = claims.get("events")
        if not isinstance(events, dict) or not events:
            raise SecurityEventTokenInvalid("invalid_request", "events is missing")
        parsed = []
        for uri, payload in events.items():
            kind = EVENT_TYPES.get(uri)
            parsed.append(
                ParsedEvent(
                    SecurityEventKind(kind) if kind else None,
                    uri,
                    payload if isinstance(payload, dict) else {},
                )
            )
        return issued_at, jti, parsed

    # ------------------------------------------------------------------ acting

    async def _apply(
        self, session: AsyncSession, event: ParsedEvent, issued_at: datetime, issuers: set[str]
    ) -> tuple[str, Account | None]:
        kind = event.kind
        if kind is None:
            return "ignored", None
        if kind == SecurityEventKind.VERIFICATION:
            state = event.payload.get("state")
            log.info(
                "verification event received (state %r)",
                state[:200] if isinstance(state, str) else None,
            )
            return "verified", None
        accounts, by_token = await self._subjects(session, event, issuers)
        if not accounts:
            return "unknown_subject", None
        outcome = "recorded"
        for account in accounts:
            # An event naming the stored refresh token is about the current grant.
            if not by_token and await self._superseded(session, account, kind, issued_at):
                outcome = "superseded"
                continue
            outcome = await self._act(session, account, kind, event, issued_at)
        return outcome, accounts[0]

    async def _act(
        self,
        session: AsyncSession,
        account: Account,
        kind: SecurityEventKind,
        event: ParsedEvent,
        issued_at: datetime,
    ) -> str:
        states = self.account_states
        when = issued_at.isoformat(timespec="seconds").replace("+00:00", "Z")
        if kind in (SecurityEventKind.TOKENS_REVOKED, SecurityEventKind.TOKEN_REVOKED):
            if account.status == AccountStatus.REVOKED:
                return "recorded"
            await states.revoke(
                session, account, reason=StatusReason.REVOKED_BY_USER,
                detail=f"Google's Cross-Account Protection reported this app's tokens for the "
                f"account revoked ({event.uri.rsplit('/', 1)[-1]}, issued {when}); the broker "
                "erased them before any refresh.",
                cause={"class": "security_event", "event": kind.value},
            )  # fmt: skip
            return "applied"
        if kind == SecurityEventKind.ACCOUNT_PURGED:
            if account.status == AccountStatus.REVOKED:
                return "recorded"
            await states.revoke(
                session, account, reason=StatusReason.DELETED_UPSTREAM,
                detail=f"Google reported the Google account deleted (account-purged, issued "
                f"{when}).",
                cause={"class": "security_event", "event": kind.value},
            )  # fmt: skip
            return "applied"
        if kind == SecurityEventKind.ACCOUNT_DISABLED:
            if account.status == AccountStatus.REVOKED:
                return "recorded"
            google_reason = event.payload.get("reason")
            google_reason = google_reason if isinstance(google_reason, str) else None
            await states.suspend(
                session, account, reason=suspension_reason(google_reason),
                detail=f"Google disabled the Google account (account-disabled, reason "
                f"{google_reason or 'none given'}, issued {when}).",
            )  # fmt: skip
            return "applied"
        if kind == SecurityEventKind.ACCOUNT_ENABLED:
            if account.status != AccountStatus.SUSPENDED:
                return "recorded"
            await states.lift_suspension(session, account)
            return "applied"
        await states.security_event(session, account, kind)
        return "recorded"

    async def _superseded(
        self, session: AsyncSession, account: Account, kind: SecurityEventKind, issued_at: datetime
    ) -> bool:
        """Whether something newer than this event already decided what it would change."""
        if kind in (SecurityEventKind.TOKENS_REVOKED, SecurityEventKind.TOKEN_REVOKED):
            granted = account.granted_at
            # A consent after the event: the tokens it revoked were the old grant's.
            return granted is not None and granted >= issued_at + CONSENT_MARGIN
        opposite = OPPOSITES.get(kind)
        if opposite is None:
            return False
        later = await RiscEventRepository(session).of_account(account.id, since=issued_at)
        return any(
            opposite.value in row.event_types.split() and row.issued_at > issued_at for row in later
        )

    async def _subjects(
        self, session: AsyncSession, event: ParsedEvent, issuers: set[str]
    ) -> tuple[list[Account], bool]:
        """The accounts an event names: by Google subject (iss-sub, id_token_claims), by
        refresh token identifier (oauth_token; then True), or by verified email (email)."""
        subject = event.payload.get("subject")
        subject = subject if isinstance(subject, dict) else event.payload
        accounts = AccountRepository(session)
        sub = subject.get("sub")
        if isinstance(sub, str) and sub:
            issuer = subject.get("iss")
            if isinstance(issuer, str) and issuer.rstrip("/") not in issuers:
                return [], False
            account = await accounts.by_subject(PROVIDER, sub)
            return ([account] if account is not None else []), False
        token = subject.get("token")
        algorithm = subject.get("token_identifier_alg")
        if isinstance(token, str) and token:
            if algorithm == "hash_base64_sha512_sha512":
                return list(await accounts.by_refresh_token_identifier(sha512x2=token)), True
            if algorithm == "prefix":
                prefix_hash = hashlib.sha256(token[:16].encode()).hexdigest()
                found = await accounts.by_refresh_token_identifier(prefix_sha256=prefix_hash)
                return list(found), True
            return [], True
        email = subject.get("email")
        if isinstance(email, str) and "@" in email:
            holders = await accounts.with_verified_email(PROVIDER, email)
            return (list(holders) if len(holders) == 1 else []), False
        return [], False
