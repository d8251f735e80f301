"""Google's scope names, and the one rule for comparing scopes.

Google treats `email` and `https://www.googleapis.com/auth/userinfo.email` as one scope,
and `profile` and `https://www.googleapis.com/auth/userinfo.profile` likewise, and its
token responses name them with the long URLs whichever spelling was asked for (GOOGLE.md,
"Scope names"; oauthlib's "Scope has changed" warning in
googleapis/google-api-python-client#1088). So scopes are never compared as strings:
required scopes at connect, scopes a caller may request and the configuration's own check
all go through `google_name`, and the scopes the broker stores and shows are in Google's
spelling.
"""

from __future__ import annotations

from collections.abc import Iterable

USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
USERINFO_PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
_GOOGLE_NAMES = {"email": USERINFO_EMAIL, "profile": USERINFO_PROFILE}


def google_name(scope: str) -> str:
    """The spelling Google answers with for `scope`."""
    return _GOOGLE_NAMES.get(scope, scope)


def google_names(scopes: Iterable[str]) -> tuple[str, ...]:
    """`scopes` in Google's spelling, each once, in their first order."""
    return tuple(dict.fromkeys(google_name(scope) for scope in scopes))


def missing(required: Iterable[str], present: Iterable[str]) -> list[str]:
    """The `required` scopes (as written) that no scope in `present` is the same as."""
    have = set(google_names(present))
    return [scope for scope in required if google_name(scope) not in have]
