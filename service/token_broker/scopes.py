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


# The sign-in scopes: Google grants them with any sign-in, and a grant holding nothing else
# is exempt from the 7-day expiry of apps in testing status (Google's OAuth 2.0 guide,
# "Refresh token expiration": "unless the only OAuth scopes requested are a subset of name,
# email address, and user profile (through the userinfo.email, userinfo.profile, openid
# scopes, or their OpenID Connect equivalents)").
OPENID = "openid"
SIGN_IN_SCOPES = frozenset({OPENID, USERINFO_EMAIL, USERINFO_PROFILE})

# Gmail's scopes that may call each method (the Gmail discovery document, gmail.v1.json:
# users.messages.list and users.messages.get, "scopes"). gmail.metadata reads ids, labels
# and headers only: Gmail refuses a `q` with it, and the `full` and `raw` formats.
GMAIL = "https://www.googleapis.com/auth/gmail."
GMAIL_METADATA = GMAIL + "metadata"
GMAIL_READ_SCOPES = frozenset(
    {"https://mail.google.com/", GMAIL + "modify", GMAIL + "readonly", GMAIL_METADATA}
)


def gmail_scopes_for(*, query: str | None, message_format: str | None) -> frozenset[str]:
    """The scopes any one of which lets a listing (with `query`, and details in
    `message_format`, if any) run: the check a listing makes before calling Gmail."""
    if query or message_format in ("full", "raw"):
        return GMAIL_READ_SCOPES - {GMAIL_METADATA}
    return GMAIL_READ_SCOPES


def is_sign_in_only(scopes: Iterable[str]) -> bool:
    """Whether every scope is a sign-in scope (name, email address, profile)."""
    return all(google_name(scope) in SIGN_IN_SCOPES for scope in scopes)
