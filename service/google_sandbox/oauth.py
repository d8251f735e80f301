"""Google's OAuth 2.0 and OpenID Connect endpoints: authorize (with a consent page), token,
revoke, userinfo, signing certificates and discovery.

Facts beyond those in `scopes.py`, `keys.py` and `identity.py`:

- A code exchanged with another `redirect_uri` than it was issued for is refused with 400
  `redirect_uri_mismatch` (GOOGLE.md, "Token endpoint"; RFC 6749 4.1.3 requires the match).
- `prompt=none`: "The authorization server does not display any authentication or user
  consent screens; it will return an error if the user is not already authenticated and has
  not pre-configured consent for the requested scopes" (Google's OpenID Connect guide,
  developers.google.com/identity/openid-connect/openid-connect, "prompt"). The errors are
  OpenID Connect Core 3.1.2.6's `login_required` and `consent_required`. Who is signed in
  is the sandbox's session cookie (set by the consent page) or the `login_hint`.
- A refresh may name a `scope` narrower than the grant (RFC 6749 section 6; google-auth
  sends its credentials' scopes: "If present, all scopes must be authorized for the refresh
  token", `google.oauth2._client.refresh_grant`); unknown names are `invalid_scope`.
- Discovery: every endpoint lives under the same root as the discovery document, so a
  sandbox mounted under a prefix (dev mode's `/sandbox`) names working URLs.

Why refreshes are refused, and when grants end: `grant_ends.py`.

Identity as Google documents it (https://developers.google.com/identity/openid-connect/reference):

- The authorization response carries `iss` (RFC 9207), success and error alike, and the
  discovery document says so with `authorization_response_iss_parameter_supported`.
- The ID token from a code exchange carries the authorization request's `nonce`.
- `aud` is the client; `azp` names the client that asked, which differs for hybrid apps
  whose web and Android clients share a project (google-auth-library's TokenPayload:
  "only needed when the party requesting the ID token is not the same as the audience").
  A client's `extra_audiences` and `azp` (control API) issue such multi-audience tokens.
- `email` "may not be unique and is not suitable for use as a primary key", and
  `email_verified` says whether Google verified it: per user here (`email_claim`,
  `email_verified`), so a test can play an account claiming someone else's address.
- The consent page preselects `login_hint`, and the user may pick any other account.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import time
from typing import Any
from urllib.parse import unquote, urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from google_sandbox import identity
from google_sandbox.consent import consent_page
from google_sandbox.errors import NO_STORE, error_page, google_api_error, oauth_error
from google_sandbox.grant_ends import EXPIRED_OR_REVOKED, consented, refusal
from google_sandbox.records import AccessToken, AuthCode, Grant, SandboxUser
from google_sandbox.scopes import (
    SIGN_IN_SCOPES,
    google_name,
    granted_names,
    invalid_scope_description,
    unknown,
)
from google_sandbox.state import SandboxState

AUTHORIZE_PATH = "/o/oauth2/v2/auth"
SESSION_COOKIE = "SANDBOX_SID"


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | JSONResponse:
    header = request.headers.get("authorization", "")
    in_body = "client_secret" in form
    if header.lower().startswith("basic "):
        if in_body:
            return oauth_error(400, "invalid_request", "Multiple client authentication methods.")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            client_id, _, secret = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return oauth_error(401, "invalid_client", "Unauthorized")
        return unquote(client_id), unquote(secret)
    if in_body:
        return form.get("client_id", ""), form["client_secret"]
    return oauth_error(401, "invalid_client", "Unauthorized")


def _validate_authorization(state: SandboxState, params: dict[str, str]) -> Response | None:
    client = state.clients.get(params.get("client_id", ""))
    if client is None:
        return error_page(401, "invalid_client", "The OAuth client was not found.")
    if params.get("redirect_uri") not in client.redirect_uris:
        return error_page(
            400,
            "redirect_uri_mismatch",
            "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 "
            "policy. The redirect_uri is not registered for this client.",
        )
    if params.get("response_type") != "code":
        return error_page(400, "invalid_request", "Missing or unsupported response_type.")
    scopes = params.get("scope", "").split()
    if not scopes:
        return error_page(400, "invalid_request", "Missing required parameter: scope")
    invalid = unknown(scopes)
    if invalid:
        return error_page(400, "invalid_scope", invalid_scope_description(invalid))
    method = params.get("code_challenge_method")
    if params.get("code_challenge") and method not in (None, "S256", "plain"):
        return error_page(400, "invalid_request", "Invalid code_challenge_method.")
    if "approval_prompt" in params and "prompt" in params:
        return error_page(400, "invalid_request", "Conflict params: approval_prompt and prompt")
    return None


def _redirect(redirect_uri: str, params: dict[str, str]) -> Response:
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(redirect_uri + separator + urlencode(params), status_code=302)


def _root_url(request: Request) -> str:
    """Where this sandbox is served, its mount prefix (dev mode's `/sandbox`) included."""
    root = request.scope.get("root_path", "")
    return str(request.url.replace(path=root, query="", fragment="")).rstrip("/")


def _issuer(state: SandboxState, request: Request) -> str:
    return state.issuer or _root_url(request)


def _signed_in(state: SandboxState, request: Request, login_hint: str) -> SandboxUser | None:
    """The user a silent authorization is for: the login_hint, else the session cookie."""
    email = login_hint.strip().lower() or state.sessions.get(
        request.cookies.get(SESSION_COOKIE, ""), ""
    )
    return state.users.get(email)


def _authorization_response(
    state: SandboxState, request: Request, redirect_uri: str, params: dict[str, str]
) -> Response:
    """The authorization response, success or error, naming its issuer (RFC 9207)."""
    return _redirect(redirect_uri, {**params, "iss": _issuer(state, request)})


def _code_redirect(
    state: SandboxState,
    request: Request,
    params: dict[str, str],
    code: AuthCode,
    *,
    prompt: str,
) -> Response:
    value = state.issue_code(code)
    if code.redirect_uri == "postmessage":
        # Google's popup code client hands the code to the opener window.
        message = json.dumps({"code": value, "scope": " ".join(sorted(code.scopes))})
        return HTMLResponse(
            "<!doctype html><p>Authorization code ready.</p>"
            f'<code id="code" data-code="{html.escape(value)}"></code>'
            f"<script>window.opener&&window.opener.postMessage({message},'*')</script>"
        )
    answer = {"state": params["state"]} if "state" in params else {}
    return _authorization_response(
        state,
        request,
        code.redirect_uri,
        {
            **answer,
            "code": value,
            "scope": " ".join(sorted(code.scopes)),
            "authuser": "0",
            "prompt": prompt,
        },
    )


def oauth_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["oauth"])

    def silent_authorization(request: Request, params: dict[str, str]) -> Response:
        """prompt=none: a code at once for a signed-in user whose grant covers the request."""
        answer = {"state": params["state"]} if "state" in params else {}
        user = _signed_in(state, request, params.get("login_hint", ""))
        if user is None:
            return _authorization_response(
                state, request, params["redirect_uri"], {"error": "login_required", **answer}
            )
        requested = granted_names(params["scope"].split())
        grant = state.live_grant(user.email, params["client_id"])
        if grant is None or not requested <= grant.scopes:
            return _authorization_response(
                state, request, params["redirect_uri"], {"error": "consent_required", **answer}
            )
        scopes = grant.scopes if params.get("include_granted_scopes") == "true" else requested
        code = _auth_code(state, params, user, scopes, consented=False)
        return _code_redirect(state, request, params, code, prompt="none")

    @router.get(AUTHORIZE_PATH, response_class=HTMLResponse, summary="Authorization endpoint")
    async def authorize(request: Request) -> Response:
        params = dict(request.query_params)
        problem = _validate_authorization(state, params)
        if problem is not None:
            return problem
        if params.get("prompt") == "none":
            return silent_authorization(request, params)
        return consent_page(state, str(request.url.path), params)

    @router.post(
        AUTHORIZE_PATH, summary="Consent decision (the consent form, or a test, posts here)"
    )
    async def consent(request: Request) -> Response:
        form = await request.form()
        params = {
            k: str(v)
            for k, v in form.items()
            if k not in ("granted_scope", "decision", "email", "email_other")
        }
        problem = _validate_authorization(state, params)
        if problem is not None:
            return problem
        redirect_uri = params["redirect_uri"]
        with_state = {"state": params["state"]} if "state" in params else {}
        if form.get("decision") != "allow":
            return _authorization_response(
                state, request, redirect_uri, {"error": "access_denied", **with_state}
            )
        email = str(form.get("email_other") or form.get("email") or params.get("login_hint") or "")
        if "@" not in email:
            return error_page(400, "invalid_request", "Choose an account to continue.")
        user = state.add_user(email)
        requested = granted_names(params["scope"].split())
        ticked = {google_name(str(scope)) for scope in form.getlist("granted_scope")}
        granted = (requested & ticked if ticked else requested) | (requested & SIGN_IN_SCOPES)
        existing = state.live_grant(user.email, params["client_id"])
        if existing is not None and params.get("include_granted_scopes") == "true":
            granted |= existing.scopes
        forced = (
            "consent" in params.get("prompt", "").split()
            or params.get("approval_prompt") == "force"
        )
        code = _auth_code(state, params, user, granted, consented=existing is None or forced)
        response = _code_redirect(state, request, params, code, prompt="consent")
        response.set_cookie(
            SESSION_COOKIE,
            state.sign_in(user.email),
            path=request.scope.get("root_path") or "/",
            httponly=True,
            samesite="lax",
        )
        return response

    @router.post("/token", summary="Token endpoint")
    async def token(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            return oauth_error(400, "invalid_request", "Request must be form-encoded.")
        form = {k: str(v) for k, v in (await request.form()).items()}
        credentials = _client_credentials(request, form)
        if isinstance(credentials, Response):
            return credentials
        client_id, secret = credentials
        client = state.clients.get(client_id)
        if client is None:
            return oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if secret != client.client_secret:
            return oauth_error(401, "invalid_client", "Unauthorized")
        grant_type = form.get("grant_type")
        if grant_type is None:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        state.calls[f"token:{grant_type}"] += 1
        if grant_type == "authorization_code":
            return _exchange(request, client_id, form)
        if grant_type == "refresh_token":
            return _refresh(request, client_id, form)
        return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _exchange(request: Request, client_id: str, form: dict[str, str]) -> Response:
        if not form.get("code"):
            return oauth_error(400, "invalid_request", "Missing required parameter: code")
        if not form.get("redirect_uri"):
            return oauth_error(400, "invalid_request", "Missing parameter: redirect_uri")
        code = state.codes.get(form["code"])
        if code is None:
            return oauth_error(400, "invalid_grant", "Malformed auth code.")
        if code.used or code.expires_at <= time.time() or code.client_id != client_id:
            return oauth_error(400, "invalid_grant", "Bad Request")
        if form["redirect_uri"] != code.redirect_uri:
            return oauth_error(400, "redirect_uri_mismatch", "Bad Request")
        code.used = True
        if code.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                return oauth_error(400, "invalid_grant", "Missing code verifier.")
            expected = (
                create_s256_code_challenge(verifier)
                if code.code_challenge_method == "S256"
                else verifier
            )
            if expected != code.code_challenge:
                return oauth_error(400, "invalid_grant", "Invalid code verifier.")
        grant = state.live_grant(code.email, client_id)
        if grant is None:
            grant = state.new_grant(code.email, client_id, set(code.scopes))
        grant.scopes = set(code.scopes)
        if code.issue_refresh_token:
            consented(grant, state.clients[client_id], code.requested)
        refresh_token = state.issue_refresh_token(grant) if code.issue_refresh_token else None
        return _token_answer(request, grant, grant.scopes, client_id, refresh_token, code.nonce)

    def _refresh(request: Request, client_id: str, form: dict[str, str]) -> Response:
        presented = form.get("refresh_token")
        if not presented:
            return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        grant, replayed = state.grant_for_refresh_token(presented)
        if grant is None or grant.revoked:
            return oauth_error(400, "invalid_grant", EXPIRED_OR_REVOKED)
        if replayed:
            # A rotated-away refresh token came back: assume it leaked, kill the grant.
            state.revoke_grant(grant)
            return oauth_error(400, "invalid_grant", EXPIRED_OR_REVOKED)
        if grant.client_id != client_id:
            return oauth_error(401, "unauthorized_client", "Unauthorized")
        refused = refusal(grant, state.users[grant.email])
        if refused is not None:
            return refused
        grant.last_used_at = time.time()
        scopes = set(grant.scopes)
        if form.get("scope", "").strip():
            asked = form["scope"].split()
            invalid = unknown(asked)
            if invalid:
                return oauth_error(400, "invalid_scope", invalid_scope_description(invalid))
            scopes = {google_name(scope) for scope in asked}
            if not scopes <= grant.scopes:
                return oauth_error(400, "invalid_scope", "Bad Request")
        refresh_token = None
        if state.rotate_refresh_tokens:
            refresh_token = state.rotate_refresh_token(grant, presented)
        return _token_answer(request, grant, scopes, client_id, refresh_token, None)

    def _token_answer(
        request: Request,
        grant: Grant,
        scopes: set[str],
        client_id: str,
        refresh_token: str | None,
        nonce: str | None,
    ) -> Response:
        access_token, lifetime = state.issue_access_token(grant, scopes)
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": lifetime,
            "scope": " ".join(sorted(scopes)),
            "token_type": "Bearer",
        }
        if state.clients[client_id].time_based_access_seconds and grant.expires_at is not None:
            body["refresh_token_expires_in"] = max(1, int(grant.expires_at - time.time()))
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if "openid" in scopes:
            body["id_token"] = identity.id_token(
                state.signing_keys.current,
                issuer=_issuer(state, request),
                client=state.clients[client_id],
                user=state.users[grant.email],
                scopes=scopes,
                access_token=access_token,
                nonce=nonce,
            )
        return JSONResponse(body, headers=NO_STORE)

    @router.post("/revoke", summary="Revoke a grant by its access or refresh token")
    async def revoke(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token") or request.query_params.get("token") or "")
        grant = None
        access = state.access_tokens.get(token)
        if access is not None:
            grant = state.grants.get(access.grant_id)
        else:
            grant, _ = state.grant_for_refresh_token(token)
        if grant is None or grant.revoked:
            return oauth_error(400, "invalid_token", "Token expired or revoked")
        state.revoke_grant(grant)
        return JSONResponse({})

    def _bearer_user(request: Request) -> tuple[AccessToken, SandboxUser] | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        access = state.valid_access_token(header[7:].strip())
        if access is None:
            return None
        return access, state.users[state.grants[access.grant_id].email]

    async def userinfo(request: Request) -> Response:
        found = _bearer_user(request)
        if found is None:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "Invalid Credentials"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        access, user = found
        return JSONResponse(identity.oidc_userinfo(user, access.scopes))

    # OpenID Connect allows GET and POST; one route per method keeps operation ids unique.
    for path, version in (("/v1/userinfo", "v1"), ("/oauth2/v3/userinfo", "v3")):
        for method in ("GET", "POST"):
            router.add_api_route(
                path,
                userinfo,
                methods=[method],
                summary=f"OpenID Connect userinfo ({version})",
                operation_id=f"userinfo_{version}_{method.lower()}",
            )

    @router.get("/oauth2/v2/userinfo", summary="Userinfo, v2 shape (id instead of sub)")
    async def userinfo_v2(request: Request) -> Response:
        found = _bearer_user(request)
        if found is None:
            return google_api_error(401)
        access, user = found
        return JSONResponse(identity.v2_userinfo(user, access.scopes))

    @router.get("/oauth2/v3/certs", summary="Signing keys as a JSON Web Key Set")
    async def certs() -> Response:
        return JSONResponse(state.signing_keys.jwks(), headers=CERTS_CACHE)

    @router.get("/oauth2/v1/certs", summary="Signing keys as {kid: PEM certificate}")
    async def certs_v1() -> Response:
        return JSONResponse(state.signing_keys.certificates(), headers=CERTS_CACHE)

    @router.get("/.well-known/openid-configuration", summary="OpenID Connect discovery")
    async def discovery(request: Request) -> Response:
        base = _root_url(request)
        return JSONResponse(
            {
                "issuer": _issuer(state, request),
                "authorization_endpoint": base + AUTHORIZE_PATH,
                "token_endpoint": base + "/token",
                "userinfo_endpoint": base + "/v1/userinfo",
                "revocation_endpoint": base + "/revoke",
                "jwks_uri": base + "/oauth2/v3/certs",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "client_secret_basic",
                ],
                "claims_supported": [
                    "aud",
                    "azp",
                    "email",
                    "email_verified",
                    "exp",
                    "family_name",
                    "given_name",
                    "iat",
                    "iss",
                    "name",
                    "nonce",
                    "sub",
                ],
                "code_challenge_methods_supported": ["plain", "S256"],
                "authorization_response_iss_parameter_supported": True,
                "grant_types_supported": ["authorization_code", "refresh_token"],
            }
        )

    return router


CERTS_CACHE = {"Cache-Control": "public, max-age=3600, must-revalidate, no-transform"}


def _auth_code(
    state: SandboxState,
    params: dict[str, str],
    user: SandboxUser,
    scopes: set[str],
    *,
    consented: bool,
) -> AuthCode:
    """A code for `user`; it carries a refresh token only for offline access on consent."""
    return AuthCode(
        client_id=params["client_id"],
        redirect_uri=params["redirect_uri"],
        email=user.email,
        scopes=set(scopes),
        code_challenge=params.get("code_challenge"),
        code_challenge_method=params.get("code_challenge_method", "plain")
        if params.get("code_challenge")
        else None,
        issue_refresh_token=params.get("access_type") == "offline" and consented,
        expires_at=time.time() + state.code_ttl,
        nonce=params.get("nonce"),
        requested=granted_names(params.get("scope", "").split()),
    )
