"""When a grant ends, and how Google refuses a refresh it will not honour.

Why refreshes are refused (Google's OAuth 2.0 guide, "Refresh token expiration",
developers.google.com/identity/protocols/oauth2#expiration), each with Google's answer:

- a client in testing status (publishing status, control API) gets grants that end 7 days
  after consent, unless the only scopes requested are a subset of name, email address
  and user profile; time-based access (`time_based_access_seconds`) ends when
  `refresh_token_expires_in`, sent with every token answer, elapses; a refresh token
  unused for six months stops working: all answer 400 invalid_grant "Token has been
  expired or revoked." (the same words as a revocation: Google does not say which);
- a session-control policy (a user's `reauth_required`): 400 invalid_grant with
  `error_subtype` invalid_rapt, "reauth related error (invalid_rapt)";
- an admin restriction (`admin_restricted`): 400 admin_policy_enforced;
- a disabled account (`disabled`): 400 invalid_grant.
"""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse, Response

from google_sandbox.errors import NO_STORE, oauth_error
from google_sandbox.records import Grant, SandboxClient, SandboxUser
from google_sandbox.scopes import SIGN_IN_SCOPES

TESTING_GRANT_LIFETIME = 7 * 86_400
IDLE_LIMIT = 182 * 86_400  # six months unused
EXPIRED_OR_REVOKED = "Token has been expired or revoked."


def consented(grant: Grant, client: SandboxClient, requested: set[str]) -> None:
    """A consent starts the grant's clock: its end in testing status or time-based access."""
    now = time.time()
    grant.consented_at = grant.last_used_at = now
    ends = []
    if client.publishing_status == "testing" and not requested <= SIGN_IN_SCOPES:
        ends.append(now + TESTING_GRANT_LIFETIME)
    if client.time_based_access_seconds:
        ends.append(now + client.time_based_access_seconds)
    grant.expires_at = min(ends) if ends else None


def refusal(grant: Grant, user: SandboxUser) -> Response | None:
    """Google's answer to a refresh of a grant that cannot be refreshed now, if it cannot."""
    now = time.time()
    if user.disabled:
        return oauth_error(400, "invalid_grant", EXPIRED_OR_REVOKED)
    if user.admin_restricted:
        return oauth_error(400, "admin_policy_enforced", "Access restricted by an administrator.")
    if user.reauth_required:
        body = {
            "error": "invalid_grant",
            "error_description": "reauth related error (invalid_rapt)",
            "error_uri": "https://support.google.com/a/answer/9368756",
            "error_subtype": "invalid_rapt",
        }
        return JSONResponse(body, status_code=400, headers=NO_STORE)
    if grant.expires_at is not None and now >= grant.expires_at:
        return oauth_error(400, "invalid_grant", EXPIRED_OR_REVOKED)
    if now - grant.last_used_at >= IDLE_LIMIT:
        return oauth_error(400, "invalid_grant", EXPIRED_OR_REVOKED)
    return None
