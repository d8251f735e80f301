"""Google's scope names: which exist, which are the same scope, and how Google spells them back.

Facts (checked against public sources):

- `email` and `https://www.googleapis.com/auth/userinfo.email` are one scope, and so are
  `profile` and `…/userinfo.profile`; token responses name them with the long URLs in
  `scope` whichever spelling was asked for, and asking for either adds `openid`. Requesting
  "email profile" answers "https://www.googleapis.com/auth/userinfo.email openid
  https://www.googleapis.com/auth/userinfo.profile" (oauthlib's "Scope has changed"
  warning quoted in googleapis/google-api-python-client#1088; GOOGLE.md, "Scope names").
- The email claim is "provided only if your scope included the string email" (Google's ID
  token reference, quoted in google-auth-library's TokenPayload docs), i.e. either spelling.
- Gmail's scopes are those of the Gmail discovery document (`gmail.v1.json`, shipped in
  google-api-python-client); `users.messages.list` accepts only four of them.
- An unknown scope is refused as `invalid_scope` "Some requested scopes were invalid.
  {invalid=[…]}" (googleapis/google-auth-library-python#999), also on refresh.
"""

from __future__ import annotations

from collections.abc import Iterable

OPENID = "openid"
USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
USERINFO_PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
_LONG_NAMES = {"email": USERINFO_EMAIL, "profile": USERINFO_PROFILE}

GMAIL = "https://www.googleapis.com/auth/gmail."
_GMAIL_SCOPE_NAMES = (
    "addons.current.action.compose", "addons.current.message.action",
    "addons.current.message.metadata", "addons.current.message.readonly", "compose", "insert",
    "labels", "metadata", "modify", "readonly", "send", "settings.basic", "settings.sharing",
)  # fmt: skip
GMAIL_SCOPES = frozenset({"https://mail.google.com/", *(GMAIL + n for n in _GMAIL_SCOPE_NAMES)})
GMAIL_METADATA = GMAIL + "metadata"
# gmail.v1.json, users.messages.list: "scopes".
MESSAGES_LIST_SCOPES = frozenset(
    {"https://mail.google.com/", GMAIL_METADATA, GMAIL + "modify", GMAIL + "readonly"}
)
# gmail.v1.json, users.messages.get: "scopes".
MESSAGES_GET_SCOPES = MESSAGES_LIST_SCOPES | {
    GMAIL + "addons.current.message.action",
    GMAIL + "addons.current.message.metadata",
    GMAIL + "addons.current.message.readonly",
}
# Always granted with the sign-in: the consent screen offers no box to untick them.
SIGN_IN_SCOPES = frozenset({OPENID, USERINFO_EMAIL, USERINFO_PROFILE})
KNOWN_SCOPES = frozenset({*_LONG_NAMES, *SIGN_IN_SCOPES, *GMAIL_SCOPES})


def google_name(scope: str) -> str:
    """The name Google uses for `scope` in its answers."""
    return _LONG_NAMES.get(scope, scope)


def unknown(scopes: Iterable[str]) -> list[str]:
    return [scope for scope in scopes if scope not in KNOWN_SCOPES]


def granted_names(scopes: Iterable[str]) -> set[str]:
    """What Google grants for these requested scopes, in its own names."""
    names = {google_name(scope) for scope in scopes}
    if names & {USERINFO_EMAIL, USERINFO_PROFILE}:
        names.add(OPENID)
    return names


def invalid_scope_description(scopes: list[str]) -> str:
    return "Some requested scopes were invalid. {invalid=[" + ", ".join(scopes) + "]}"
