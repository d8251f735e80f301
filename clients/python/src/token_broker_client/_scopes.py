"""Comparing Google scopes the way the broker does.

Google treats `email` and `https://www.googleapis.com/auth/userinfo.email` as one scope,
and `profile` and `https://www.googleapis.com/auth/userinfo.profile` likewise, and names
them with the long URLs in its answers whichever spelling was asked for (the broker's
README, "Repairing scopes"). A cached token serves a request naming scopes only when the
broker would have served it, so the client compares by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable

_GOOGLE_NAMES = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}


def google_name(scope: str) -> str:
    """The spelling Google answers with for `scope`."""
    return _GOOGLE_NAMES.get(scope, scope)


def missing(required: Iterable[str], present: Iterable[str]) -> list[str]:
    """The `required` scopes (as written) that no scope in `present` is the same as."""
    have = {google_name(scope) for scope in present}
    return [scope for scope in required if google_name(scope) not in have]
