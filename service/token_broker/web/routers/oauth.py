"""The connect flow over HTTP: start an authorization, receive the callback, exchange a code."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from token_broker.errors import (
    CodeExchangeFailed,
    NoRefreshToken,
    NoUserId,
    PayloadTooLarge,
    ProviderRejectedClient,
    ReturnToNotAllowed,
    ScopeNotAllowed,
    ScopeNotGranted,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamUnavailable,
    caller_problems,
)
from token_broker.services.connect import CallbackOutcome
from token_broker.web.dependencies import AccountsWriter, State
from token_broker.web.problems import problem_responses
from token_broker.web.schemas import Account, Authorization, AuthorizationRequest, ExchangeRequest

router = APIRouter(tags=["oauth"])

# The callback URL holds an authorization code: the answer must not be cached, and the
# page must not hand its URL to anything it links to.
CALLBACK_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
CALLBACK_PAGE_SCRIPT = Path(__file__).parents[1] / "static" / "callback-page.js"
CALLBACK_PAGE_SCRIPT_PATH = "/v1/oauth/callback-page.js"


@router.post(
    "/v1/authorizations",
    status_code=201,
    response_model=Authorization,
    summary="Start connecting a Google account",
    responses=problem_responses(
        *caller_problems(),
        ReturnToNotAllowed,
        ScopeNotAllowed,
        PayloadTooLarge,
        UnsupportedMediaType,
    ),
)
async def start_authorization(
    state: State, caller: AccountsWriter, body: AuthorizationRequest | None = None
) -> Authorization:
    body = body or AuthorizationRequest()
    started = await state.authorizations.start(
        client_id=caller.client_id,
        login_hint=body.login_hint,
        scopes=body.scopes,
        return_to=body.return_to,
    )
    return Authorization(
        authorization_url=started.authorization_url,
        state=started.state,
        expires_at=started.expires_at,
    )


@router.get(
    "/v1/oauth/callback",
    response_class=HTMLResponse,
    summary="Google redirects the user's browser here (no API key)",
    responses={
        303: {"description": "Back to `return_to` with `account` and `status`, or `error`."},
        **{
            status: {
                "description": "A small HTML page naming the error, when there is no return_to.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
            for status in (400, 403, 409, 502, 503)
        },
    },
)
async def oauth_callback(request: Request, state: State) -> Response:
    params = {key: value for key, value in request.query_params.items() if len(value) <= 4096}
    outcome = await state.connect.callback(params)
    redirect = outcome.redirect_url()
    if redirect is not None:
        return RedirectResponse(redirect, status_code=303, headers=CALLBACK_HEADERS)
    return result_page(outcome)


@router.get(CALLBACK_PAGE_SCRIPT_PATH, include_in_schema=False)
async def callback_page_script() -> FileResponse:
    return FileResponse(
        CALLBACK_PAGE_SCRIPT,
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.post(
    "/v1/oauth/exchange",
    response_model=Account,
    summary="Exchange a code from a browser-side code client (redirect URI `postmessage`)",
    responses=problem_responses(
        *caller_problems(),
        PayloadTooLarge,
        UnsupportedMediaType,
        CodeExchangeFailed,
        ScopeNotGranted,
        NoRefreshToken,
        NoUserId,
        ProviderRejectedClient,
        UpstreamError,
        UpstreamUnavailable,
    ),
)
async def exchange_code(
    state: State, caller: AccountsWriter, body: Annotated[ExchangeRequest, ...]
) -> Account:
    account = await state.connect.exchange(
        client_id=caller.client_id,
        code=body.code,
        redirect_uri=body.redirect_uri,
        code_verifier=body.code_verifier,
    )
    return Account.of(account)


def result_page(outcome: CallbackOutcome) -> HTMLResponse:
    if outcome.account is not None:
        who = html.escape(outcome.account.email or outcome.account.subject)
        title, status = "Account connected", 200
        text = f"<p><b>{who}</b> is connected. You can close this window.</p>"
    else:
        assert outcome.error is not None
        error = outcome.error
        title, status = html.escape(error.title), error.status
        text = (
            f"<p>{html.escape(error.detail)}</p>"
            f"<p>Error: <code>{html.escape(error.code)}</code></p>"
        )
        if error.authorization_url:
            text += f'<p><a href="{html.escape(error.authorization_url)}">Try again</a></p>'
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body style='font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto'>"
        f"<h1>{title}</h1>{text}<script src='{CALLBACK_PAGE_SCRIPT_PATH}'></script>"
        "</body></html>",
        status_code=status,
        headers=CALLBACK_HEADERS,
    )
