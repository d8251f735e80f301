"""Google's OAuth 2.0 and OpenID Connect endpoints: authorize (with a consent page), token,
revoke, userinfo, JWKS and discovery.
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
from joserfc import jwt

from google_sandbox.errors import NO_STORE, error_page, google_api_error, oauth_error
from google_sandbox.state import BASIC_SCOPES, KNOWN_SCOPES, AuthCode, Grant, SandboxState

AUTHORIZE_PATH = "/o/oauth2/v2/auth"


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
    unknown = [scope for scope in scopes if scope not in KNOWN_SCOPES]
    if unknown:
        return error_page(400, "invalid_scope", f"Some requested scopes were invalid: {unknown}")
    method = params.get("code_challenge_method")
    if params.get("code_challenge") and method not in (None, "S256", "plain"):
        return error_page(400, "invalid_request", "Invalid code_challenge_method.")
    if "approval_prompt" in params and "prompt" in params:
        return error_page(400, "invalid_request", "Conflict params: approval_prompt and prompt")
    return None


_CONSENT_STYLE = """
body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;color:#202124}
label{display:block;margin:.4rem 0}
fieldset{border:1px solid #dadce0;border-radius:8px;margin:1rem 0}
button{padding:.5rem 1.2rem;margin-right:.5rem;border-radius:4px;border:1px solid #1a73e8}
.allow{background:#1a73e8;color:#fff}
"""


def _consent_page(state: SandboxState, action: str, params: dict[str, str]) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items()
    )
    hint = params.get("login_hint", "").lower()
    accounts = "".join(
        f'<label class="account"><input type="radio" name="email" value="{html.escape(email)}"'
        f"{' checked' if email == hint else ''}> {html.escape(user.name)} "
        f"&lt;{html.escape(email)}&gt;</label>"
        for email, user in sorted(state.users.items())
    )
    scopes = "".join(
        f'<label><input type="checkbox" name="granted_scope" value="{html.escape(scope)}" checked'
        f"{' disabled' if scope in BASIC_SCOPES else ''}> {html.escape(scope)}</label>"
        + (
            f'<input type="hidden" name="granted_scope" value="{scope}">'
            if scope in BASIC_SCOPES
            else ""
        )
        for scope in params.get("scope", "").split()
    )
    client = html.escape(params.get("client_id", ""))
    new_email = html.escape(hint if hint and hint not in state.users else "")
    return HTMLResponse(
        f"""<!doctype html><html><head><meta charset="utf-8">
<title>Sign in - Sandbox Google</title><style>{_CONSENT_STYLE}</style></head><body>
<h1>Sandbox Google</h1><p><b>{client}</b> wants to access your Google Account.</p>
<form method="post" action="{html.escape(action)}">{hidden}
<fieldset><legend>Choose an account</legend>{accounts}
<label>or use another account: <input type="email" name="email_other" value="{new_email}"
 placeholder="someone@example.com"></label></fieldset>
<fieldset><legend>Allow access to</legend>{scopes}</fieldset>
<button class="allow" name="decision" value="allow">Allow</button>
<button name="decision" value="deny">Cancel</button></form>
<p><small>This is the Token Broker sandbox, not Google. Nothing leaves this machine.</small></p>
</body></html>"""
    )


def _redirect(redirect_uri: str, params: dict[str, str]) -> Response:
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(redirect_uri + separator + urlencode(params), status_code=302)


def _issuer(state: SandboxState, request: Request) -> str:
    return state.issuer or str(request.base_url).rstrip("/")


def _id_token(state: SandboxState, request: Request, grant: Grant, client_id: str) -> str:
    user = state.users[grant.email]
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": _issuer(state, request),
        "azp": client_id,
        "aud": client_id,
        "sub": user.sub,
        "iat": now,
        "exp": now + 3600,
    }
    if "email" in grant.scopes:
        claims.update(email=user.email, email_verified=True)
    if "profile" in grant.scopes:
        claims.update(name=user.name)
    header = {"alg": "RS256", "kid": state.signing_key.kid}
    return jwt.encode(header, claims, state.signing_key)


def oauth_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["oauth"])

    @router.get(AUTHORIZE_PATH, response_class=HTMLResponse, summary="Authorization endpoint")
    async def authorize(request: Request) -> Response:
        params = dict(request.query_params)
        problem = _validate_authorization(state, params)
        if problem is not None:
            return problem
        if params.get("prompt") == "none":
            return _redirect(
                params["redirect_uri"],
                {"error": "consent_required", "state": params.get("state", "")},
            )
        return _consent_page(state, str(request.url.path), params)

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
        answer = {"state": params["state"]} if "state" in params else {}
        if form.get("decision") != "allow":
            return _redirect(redirect_uri, {"error": "access_denied", **answer})
        email = str(form.get("email_other") or form.get("email") or params.get("login_hint") or "")
        if "@" not in email:
            return error_page(400, "invalid_request", "Choose an account to continue.")
        user = state.add_user(email)
        requested = set(params["scope"].split())
        ticked = {str(scope) for scope in form.getlist("granted_scope")}
        granted = (requested & ticked if ticked else requested) | (requested & BASIC_SCOPES)
        existing = state.live_grant(user.email, params["client_id"])
        if existing is not None and params.get("include_granted_scopes") == "true":
            granted |= existing.scopes
        offline = params.get("access_type") == "offline"
        forced = (
            "consent" in params.get("prompt", "").split()
            or params.get("approval_prompt") == "force"
        )
        code = state.issue_code(
            AuthCode(
                client_id=params["client_id"],
                redirect_uri=redirect_uri,
                email=user.email,
                scopes=granted,
                code_challenge=params.get("code_challenge"),
                code_challenge_method=params.get("code_challenge_method", "plain")
                if params.get("code_challenge")
                else None,
                issue_refresh_token=offline and (existing is None or forced),
                expires_at=time.time() + state.code_ttl,
            )
        )
        if redirect_uri == "postmessage":
            # Google's popup code client hands the code to the opener window.
            message = json.dumps({"code": code, "scope": " ".join(sorted(granted))})
            return HTMLResponse(
                "<!doctype html><p>Authorization code ready.</p>"
                f'<code id="code" data-code="{html.escape(code)}"></code>'
                f"<script>window.opener&&window.opener.postMessage({message},'*')</script>"
            )
        return _redirect(
            redirect_uri,
            {
                **answer,
                "code": code,
                "scope": " ".join(sorted(granted)),
                "authuser": "0",
                "prompt": "consent",
            },
        )

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
            return oauth_error(400, "invalid_grant", "Bad Request")
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
        refresh_token = state.issue_refresh_token(grant) if code.issue_refresh_token else None
        return _token_answer(request, grant, client_id, refresh_token)

    def _refresh(request: Request, client_id: str, form: dict[str, str]) -> Response:
        presented = form.get("refresh_token")
        if not presented:
            return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        grant, replayed = state.grant_for_refresh_token(presented)
        if grant is None or grant.revoked:
            return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        if replayed:
            # A rotated-away refresh token came back: assume it leaked, kill the grant.
            state.revoke_grant(grant)
            return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        if grant.client_id != client_id:
            return oauth_error(401, "unauthorized_client", "Unauthorized")
        refresh_token = None
        if state.rotate_refresh_tokens:
            refresh_token = state.rotate_refresh_token(grant, presented)
        return _token_answer(request, grant, client_id, refresh_token)

    def _token_answer(
        request: Request, grant: Grant, client_id: str, refresh_token: str | None
    ) -> Response:
        access_token, lifetime = state.issue_access_token(grant)
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": lifetime,
            "scope": " ".join(sorted(grant.scopes)),
            "token_type": "Bearer",
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if "openid" in grant.scopes:
            body["id_token"] = _id_token(state, request, grant, client_id)
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

    def _bearer_user(request: Request) -> tuple[Any, Any] | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        access = state.valid_access_token(header[7:].strip())
        if access is None:
            return None
        return access, state.users[state.grants[access.grant_id].email]

    @router.api_route("/v1/userinfo", methods=["GET", "POST"], summary="OpenID Connect userinfo")
    async def userinfo(request: Request) -> Response:
        found = _bearer_user(request)
        if found is None:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "Invalid Credentials"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        access, user = found
        body: dict[str, Any] = {"sub": user.sub}
        if "email" in access.scopes:
            body.update(email=user.email, email_verified=True)
        if "profile" in access.scopes:
            body.update(name=user.name, given_name=user.name.split()[0])
        return JSONResponse(body)

    @router.get("/oauth2/v2/userinfo", summary="Userinfo, v2 shape (id instead of sub)")
    async def userinfo_v2(request: Request) -> Response:
        found = _bearer_user(request)
        if found is None:
            return google_api_error(401)
        access, user = found
        body: dict[str, Any] = {"id": user.sub}
        if "email" in access.scopes:
            body.update(email=user.email, verified_email=True)
        if "profile" in access.scopes:
            body.update(name=user.name)
        return JSONResponse(body)

    @router.get("/oauth2/v3/certs", summary="JSON Web Key Set")
    async def certs() -> Response:
        return JSONResponse(
            {"keys": [state.signing_key.as_dict(private=False)]},
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @router.get("/.well-known/openid-configuration", summary="OpenID Connect discovery")
    async def discovery(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
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
                    "email",
                    "email_verified",
                    "exp",
                    "iat",
                    "iss",
                    "name",
                    "sub",
                ],
                "code_challenge_methods_supported": ["plain", "S256"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
            }
        )

    return router
