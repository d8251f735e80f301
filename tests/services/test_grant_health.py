"""Why a grant died: Google's answer plus what the broker knows, as one documented reason.

Pure rules (services/grant_health.py), one case per reason and per piece of evidence,
including where Google's answer alone cannot tell causes apart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from token_broker.services.grant_health import (
    GrantFacts,
    RefusedRefresh,
    SecurityEvent,
    StatusReason,
    Unusable,
    classify,
    grant_expiry,
    is_recorded,
    suspension_reason,
    unusable_problem,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
PLAIN = RefusedRefresh("invalid_grant")


def facts(**overrides: Any) -> GrantFacts:
    values: dict[str, Any] = {
        "now": NOW,
        "scopes": ["openid", GMAIL],
        "granted_at": NOW - timedelta(days=2),
        "last_used_at": NOW - timedelta(hours=1),
        "expires_at": None,
        "expiry_reason": None,
        "newer_refresh_tokens": 0,
        "security_events": (),
    }
    return GrantFacts(**(values | overrides))


def test_answers_that_name_their_cause() -> None:
    admin = classify(RefusedRefresh("admin_policy_enforced"), facts())
    assert (admin.reason, admin.ends_grant) == (StatusReason.ADMIN_POLICY, True)
    for subtype in ("invalid_rapt", "rapt_required"):
        session = classify(RefusedRefresh("invalid_grant", subtype), facts())
        assert (session.reason, session.ends_grant) == (StatusReason.SESSION_POLICY, False)
        assert "grant itself stands" in session.detail
    other_client = classify(RefusedRefresh("unauthorized_client"), facts())
    assert (other_client.reason, other_client.ends_grant) == (
        StatusReason.UNKNOWN_INVALID_GRANT,
        True,
    )


def test_a_plain_invalid_grant_says_so_and_uses_what_the_broker_knows() -> None:
    unknown = classify(PLAIN, facts())
    assert unknown.reason == StatusReason.UNKNOWN_INVALID_GRANT
    assert "gives for every way a grant ends" in unknown.detail

    testing = classify(
        PLAIN,
        facts(expires_at=NOW - timedelta(minutes=1), expiry_reason=StatusReason.EXPIRED_TESTING),
    )
    assert testing.reason == StatusReason.EXPIRED_TESTING
    assert "testing" in testing.detail
    timed = classify(
        PLAIN,
        facts(
            expires_at=NOW + timedelta(minutes=2),  # within the leeway: clocks differ
            expiry_reason=StatusReason.TIME_LIMITED_ACCESS_EXPIRED,
        ),
    )
    assert timed.reason == StatusReason.TIME_LIMITED_ACCESS_EXPIRED
    early = classify(
        PLAIN,
        facts(expires_at=NOW + timedelta(days=1), expiry_reason=StatusReason.EXPIRED_TESTING),
    )
    assert early.reason == StatusReason.UNKNOWN_INVALID_GRANT  # not due yet: not that

    revoked = classify(
        PLAIN, facts(security_events=[SecurityEvent("tokens_revoked", NOW - timedelta(hours=2))])
    )
    assert revoked.reason == StatusReason.REVOKED_BY_USER
    password = classify(
        PLAIN,
        facts(
            security_events=[SecurityEvent("credential_change_required", NOW - timedelta(days=1))]
        ),
    )
    assert password.reason == StatusReason.PASSWORD_CHANGED
    # Without Gmail scopes, a password change does not end the grant: not that cause.
    no_gmail = classify(
        PLAIN,
        facts(
            scopes=["openid"],
            security_events=[SecurityEvent("credential_change_required", NOW)],
        ),
    )
    assert no_gmail.reason == StatusReason.UNKNOWN_INVALID_GRANT
    old_news = classify(
        PLAIN, facts(security_events=[SecurityEvent("tokens_revoked", NOW - timedelta(days=40))])
    )
    assert old_news.reason == StatusReason.UNKNOWN_INVALID_GRANT

    limit = classify(PLAIN, facts(newer_refresh_tokens=100))
    assert limit.reason == StatusReason.TOKEN_LIMIT
    assert classify(PLAIN, facts(newer_refresh_tokens=99)).reason != StatusReason.TOKEN_LIMIT

    idle = classify(PLAIN, facts(last_used_at=NOW - timedelta(days=200)))
    assert idle.reason == StatusReason.EXPIRED_IDLE
    assert classify(PLAIN, facts(last_used_at=NOW - timedelta(days=170))).reason == (
        StatusReason.UNKNOWN_INVALID_GRANT
    )


def test_only_refusals_about_the_grant_are_recorded() -> None:
    assert is_recorded(RefusedRefresh("invalid_grant"))
    assert is_recorded(RefusedRefresh("admin_policy_enforced"))
    assert is_recorded(RefusedRefresh("unauthorized_client"))
    assert not is_recorded(RefusedRefresh("invalid_client"))
    assert not is_recorded(RefusedRefresh("invalid_request"))


def test_a_grants_known_end() -> None:
    consented = NOW
    assert grant_expiry(
        ["openid", GMAIL], consented_at=consented, publishing_status="production",
        refresh_token_expires_at=None,
    ) == (None, None)  # fmt: skip
    assert grant_expiry(
        ["openid", GMAIL], consented_at=consented, publishing_status="testing",
        refresh_token_expires_at=None,
    ) == (consented + timedelta(days=7), StatusReason.EXPIRED_TESTING)  # fmt: skip
    # Name, email and profile only, in either spelling: Google's exception.
    assert grant_expiry(
        ["openid", "email", "https://www.googleapis.com/auth/userinfo.profile"],
        consented_at=consented, publishing_status="testing", refresh_token_expires_at=None,
    ) == (None, None)  # fmt: skip
    soon = consented + timedelta(hours=1)
    assert grant_expiry(
        [GMAIL], consented_at=consented, publishing_status="testing",
        refresh_token_expires_at=soon,
    ) == (soon, StatusReason.TIME_LIMITED_ACCESS_EXPIRED)  # fmt: skip


@pytest.mark.parametrize(
    ("google", "reason"),
    [
        ("hijacking", StatusReason.ACCOUNT_DISABLED_HIJACKING),
        ("bulk-account", StatusReason.ACCOUNT_DISABLED_BULK_ACCOUNT),
        (None, StatusReason.ACCOUNT_DISABLED),
        ("something-new", StatusReason.ACCOUNT_DISABLED),
    ],
)
def test_suspension_reasons(google: str | None, reason: StatusReason) -> None:
    assert suspension_reason(google) == reason


def test_the_problem_a_caller_gets() -> None:
    dead = unusable_problem(Unusable("revoked", "expired_testing", "why"), "https://link")
    assert (dead.code, dead.status, dead.authorization_url) == (
        "reauthorization_required",
        409,
        "https://link",
    )
    assert dead.problem()["status_reason"] == "expired_testing"
    assert "expired_testing" in dead.detail
    suspended = unusable_problem(Unusable("suspended", "account_disabled_hijacking", None), "x")
    assert (suspended.code, suspended.authorization_url) == ("account_suspended", None)
    assert suspended.problem()["status_reason"] == "account_disabled_hijacking"
