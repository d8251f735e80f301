"""Why a grant died, and when it will: Google's answer plus what the broker knows, as a reason.

Google refuses a dead grant's refresh with `invalid_grant` ("Token has been expired or
revoked.") whatever the cause. Its OAuth 2.0 guide ("Refresh token expiration",
developers.google.com/identity/protocols/oauth2#expiration) lists the causes: the user
revoked access; the token was unused for six months; the user changed passwords and the
grant holds Gmail scopes; the account exceeded its live refresh tokens (100 per account
and client; a new one silently invalidates the oldest); an admin restricted a service the
scopes use (then the answer is `admin_policy_enforced`); and apps in testing status (user
type external) get grants that expire 7 days after consent unless they hold only the
sign-in scopes. Time-based access ends when the token response's
`refresh_token_expires_in` elapses. `invalid_grant` with `error_subtype` `invalid_rapt`
(or `rapt_required`) is a session-control policy: the user must sign in again, but the
grant stands.

So the answer alone names a reason only for `admin_policy_enforced` and `invalid_rapt`.
For a plain `invalid_grant` the broker says so (`status_detail`) and uses what it knows,
in this order: the grant's known end (testing status or time-based access, computed at
consent); a recent Cross-Account Protection event (tokens revoked, or a credential change
Google asked for); the refresh tokens it knows were issued after the stored one; how long
the grant went unused. With none of these: `unknown_invalid_grant`.

Everything here is pure (no storage, no I/O): `account_states.py` records the verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from token_broker.errors import AccountSuspended, BrokerError, ReauthorizationRequired
from token_broker.scopes import GMAIL, google_name, is_sign_in_only

TESTING_GRANT_LIFETIME = timedelta(days=7)  # "expiring in 7 days" from consent
IDLE_LIMIT = timedelta(days=182)  # "has not been used for six months"
LIVE_REFRESH_TOKEN_LIMIT = 100  # "a limit of 100 refresh tokens per Google Account per client"
# A refresh refused this close to a known end is that end (clocks differ a little).
EXPIRY_LEEWAY = timedelta(minutes=5)
# A security event this recent explains a refused refresh.
RECENT_SECURITY_EVENT = timedelta(days=30)
SESSION_POLICY_SUBTYPES = frozenset({"invalid_rapt", "rapt_required"})
# Refusals the broker records on the account; anything else (invalid_client, malformed
# requests) says nothing about the grant.
GRANT_REFUSALS = frozenset({"invalid_grant", "unauthorized_client", "admin_policy_enforced"})


class StatusReason(StrEnum):
    """Why an account's status is what it is (`status_reason`); documented in the README."""

    REVOKED_BY_USER = "revoked_by_user"
    EXPIRED_IDLE = "expired_idle"
    EXPIRED_TESTING = "expired_testing"
    PASSWORD_CHANGED = "password_changed"
    TOKEN_LIMIT = "token_limit"
    ADMIN_POLICY = "admin_policy"
    SESSION_POLICY = "session_policy"
    TIME_LIMITED_ACCESS_EXPIRED = "time_limited_access_expired"
    UNKNOWN_INVALID_GRANT = "unknown_invalid_grant"
    DELETED_UPSTREAM = "deleted_upstream"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_DISABLED_HIJACKING = "account_disabled_hijacking"
    ACCOUNT_DISABLED_BULK_ACCOUNT = "account_disabled_bulk_account"


class SecurityEventKind(StrEnum):
    """Cross-Account Protection events, by the short names the broker records."""

    TOKENS_REVOKED = "tokens_revoked"
    TOKEN_REVOKED = "token_revoked"
    SESSIONS_REVOKED = "sessions_revoked"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_ENABLED = "account_enabled"
    ACCOUNT_PURGED = "account_purged"
    CREDENTIAL_CHANGE_REQUIRED = "credential_change_required"
    VERIFICATION = "verification"


@dataclass(frozen=True)
class Verdict:
    reason: StatusReason
    ends_grant: bool  # False: the user must sign in again, the grant stands (session policy)
    detail: str


@dataclass(frozen=True)
class RefusedRefresh:
    """The token endpoint's refusal: its `error` and `error_subtype`, nothing else."""

    error: str
    subtype: str | None = None


@dataclass(frozen=True)
class SecurityEvent:
    kind: str
    issued_at: datetime


@dataclass(frozen=True)
class GrantFacts:
    """What the broker knows of a grant when its refresh is refused."""

    now: datetime
    scopes: Sequence[str]
    granted_at: datetime | None
    last_used_at: datetime | None  # the last successful refresh (or the consent)
    expires_at: datetime | None
    expiry_reason: str | None
    newer_refresh_tokens: int
    security_events: Sequence[SecurityEvent] = ()  # this account's, newest first


def is_recorded(refusal: RefusedRefresh) -> bool:
    """Whether a refused refresh says something about the grant, to be recorded."""
    return refusal.error in GRANT_REFUSALS


def classify(refusal: RefusedRefresh, facts: GrantFacts) -> Verdict:
    """The reason for a refused refresh, and whether the grant is over."""
    if refusal.error == "admin_policy_enforced":
        return Verdict(
            StatusReason.ADMIN_POLICY,
            True,
            "Google answered admin_policy_enforced: a Workspace administrator restricted a "
            "service this grant's scopes use. The user can connect again once it is allowed.",
        )
    if refusal.error == "invalid_grant" and refusal.subtype in SESSION_POLICY_SUBTYPES:
        return Verdict(
            StatusReason.SESSION_POLICY,
            False,
            f"Google answered invalid_grant with error_subtype {refusal.subtype}: a "
            "session-control policy asks the user to sign in again. The grant itself stands.",
        )
    if refusal.error != "invalid_grant":
        return Verdict(
            StatusReason.UNKNOWN_INVALID_GRANT,
            True,
            f"Google answered {refusal.error}: the refresh token is not this client's to use.",
        )
    return _plain_invalid_grant(facts)


def _plain_invalid_grant(facts: GrantFacts) -> Verdict:
    said = "Google answered invalid_grant, which it gives for every way a grant ends; "
    if facts.expires_at is not None and facts.now >= facts.expires_at - EXPIRY_LEEWAY:
        reason = StatusReason(facts.expiry_reason or StatusReason.TIME_LIMITED_ACCESS_EXPIRED)
        why = (
            "the app's publishing status is testing, whose grants end 7 days after consent"
            if reason == StatusReason.EXPIRED_TESTING
            else "the grant was time-limited (refresh_token_expires_in)"
        )
        return Verdict(
            reason, True, said + f"this grant was due to end at {_at(facts.expires_at)}: {why}."
        )
    for event in facts.security_events:
        if facts.now - event.issued_at > RECENT_SECURITY_EVENT:
            break
        if event.kind in (SecurityEventKind.TOKENS_REVOKED, SecurityEventKind.TOKEN_REVOKED):
            return Verdict(
                StatusReason.REVOKED_BY_USER,
                True,
                said + "Google's Cross-Account Protection reported the tokens revoked at "
                f"{_at(event.issued_at)}.",
            )
        if event.kind == SecurityEventKind.CREDENTIAL_CHANGE_REQUIRED and holds_gmail(facts.scopes):
            return Verdict(
                StatusReason.PASSWORD_CHANGED,
                True,
                said + f"Google asked the user to change credentials at {_at(event.issued_at)} "
                "(Cross-Account Protection), and a password change ends grants that hold "
                "Gmail scopes.",
            )
    if facts.newer_refresh_tokens >= LIVE_REFRESH_TOKEN_LIMIT:
        return Verdict(
            StatusReason.TOKEN_LIMIT,
            True,
            said + f"Google issued at least {facts.newer_refresh_tokens} refresh tokens for "
            "this account and client after the stored one, and keeps only the newest "
            f"{LIVE_REFRESH_TOKEN_LIMIT}.",
        )
    last_used = facts.last_used_at or facts.granted_at
    if last_used is not None and facts.now - last_used >= IDLE_LIMIT:
        return Verdict(
            StatusReason.EXPIRED_IDLE,
            True,
            said + f"the refresh token was last used at {_at(last_used)}, and Google drops "
            "refresh tokens unused for six months.",
        )
    return Verdict(
        StatusReason.UNKNOWN_INVALID_GRANT,
        True,
        said + "nothing the broker knows points to one cause (the user revoked access, "
        "changed a password, or Google ended the grant for another reason).",
    )


def grant_expiry(
    scopes: Iterable[str],
    *,
    consented_at: datetime,
    publishing_status: str,
    refresh_token_expires_at: datetime | None,
) -> tuple[datetime | None, StatusReason | None]:
    """When a freshly consented grant ends, if that is known, and what its end is called."""
    ends: list[tuple[datetime, StatusReason]] = []
    if publishing_status == "testing" and not is_sign_in_only(scopes):
        ends.append((consented_at + TESTING_GRANT_LIFETIME, StatusReason.EXPIRED_TESTING))
    if refresh_token_expires_at is not None:
        ends.append((refresh_token_expires_at, StatusReason.TIME_LIMITED_ACCESS_EXPIRED))
    if not ends:
        return None, None
    return min(ends)


def holds_gmail(scopes: Iterable[str]) -> bool:
    return any(
        google_name(scope).startswith(GMAIL) or scope == "https://mail.google.com/"
        for scope in scopes
    )


def suspension_reason(google_reason: str | None) -> StatusReason:
    """account-disabled's `reason` (Cross-Account Protection: hijacking, bulk-account)."""
    if google_reason == "hijacking":
        return StatusReason.ACCOUNT_DISABLED_HIJACKING
    if google_reason == "bulk-account":
        return StatusReason.ACCOUNT_DISABLED_BULK_ACCOUNT
    return StatusReason.ACCOUNT_DISABLED


@dataclass(frozen=True)
class Unusable:
    """Why no token is handed out for an account: its status, reason and detail."""

    status: str
    reason: str | None
    detail: str | None


def unusable_problem(unusable: Unusable, authorization_url: str | None) -> BrokerError:
    """The problem a caller gets for an account whose grant cannot be used now."""
    reason = unusable.reason or StatusReason.UNKNOWN_INVALID_GRANT
    if unusable.status == "suspended":
        return AccountSuspended(
            "Google disabled this Google account (Cross-Account Protection); the broker "
            "hands out no token until Google enables it again.",
            status_reason=reason,
            status_detail=unusable.detail,
        )
    if reason == StatusReason.SESSION_POLICY:
        text = "A session-control policy asks the user to sign in again at authorization_url."
    else:
        text = f"The account's grant ended ({reason}); send the user to authorization_url."
    return ReauthorizationRequired(
        text,
        authorization_url=authorization_url,
        status_reason=reason,
        status_detail=unusable.detail,
    )


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
