"""The connect flow over HTTP: start an authorization and read its outcome, receive the
callback, open a re-authorization link, exchange a code."""

from __future__ import annotations

import html
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from token_broker.errors import (
    AccountMismatch,
    AuthorizationNotFound,
    BrokerError,
    CodeExchangeFailed,
    InvalidLink,
    InvalidState,
    IssuerMismatch,
    KeyUnavailable,
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
from token_broker.kit.clock import utcnow
from token_broker.services.authorizations import outcome_status
from token_broker.services.connect import CallbackOutcome
from token_broker.services.reauthorization import MAX_LINK_LENGTH
from token_broker.web.dependencies import AccountsWriter, AnyCaller, State
from token_broker.web.problems import as_broker_error, problem_responses
from token_broker.web.schemas import (
    Account,
    Authorization,
    AuthorizationError,
    AuthorizationOutcome,
    AuthorizationRequest,
    ConnectedAccount,
    ExchangeRequest,
)

router = APIRouter(tags=["oauth"])

# The callback URL holds an authorization code: the answer must not be cached, and the
# page (or the redirect) must not hand its URL to anything it leads to. Every HTML answer
# also gets the broker's page protections (web/html_headers.py): nothing inline runs.
CALLBACK_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
CALLBACK_PAGE_SCRIPT = FilePath(__file__).parents[1] / "static" / "callback-page.js"
CALLBACK_PAGE_SCRIPT_PATH = "/v1/oauth/callback-page.js"
PAGE_STYLESHEET = FilePath(__file__).parents[1] / "static" / "page.css"
PAGE_STYLESHEET_PATH = "/v1/oauth/page.css"


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
        id=started.id,
        authorization_url=started.authorization_url,
        state=started.state,
        expires_at=started.expires_at,
    )


@router.get(
    "/v1/authorizations/{authorization_id}",
    response_model=AuthorizationOutcome,
    summary="What an authorization produced (only the API client that started it may ask)",
    description=(
        "Confirm a connect with this before trusting it: the redirect to `return_to` "
        "carries only `authorization=<id>&status=…`. Any other client's key gets 404, as "
        "does an id older than TOKEN_BROKER_AUTHORIZATION_RETENTION_DAYS. Flows started "
        "from a re-authorization link appear here when they finish, owned by the client "
        "whose request produced the link."
    ),
    responses=problem_responses(*caller_problems(), AuthorizationNotFound),
)
async def read_authorization(
    state: State,
    caller: AnyCaller,
    authorization_id: Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")],
) -> AuthorizationOutcome:
    row = await state.authorizations.of_client(authorization_id, caller.client_id)
    status = outcome_status(row, utcnow())
    return AuthorizationOutcome(
        id=row.id,
        status=status,
        account=ConnectedAccount(
            id=row.account_id, subject=row.account_subject or "", email=row.account_email
        )
        if status == "connected" and row.account_id is not None
        else None,
        error=AuthorizationError(code=row.error_code, detail=row.error_detail or "")
        if status == "failed" and row.error_code is not None
        else None,
        created_at=row.created_at,
        expires_at=row.expires_at,
        completed_at=row.completed_at,
    )


def _html_problems(*errors: type[BrokerError]) -> dict[int | str, dict[str, object]]:
    statuses = sorted({error.status for error in errors})
    return {
        status: {
            "description": "A small HTML page naming the problem: "
            + ", ".join(f"`{error.code}`" for error in errors if error.status == status),
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
        for status in statuses
    }


@router.get(
    "/v1/oauth/callback",
    response_class=HTMLResponse,
    summary="Google redirects the user's browser here (no API key)",
    description=(
        "With a `return_to`, the browser goes back there with "
        "`authorization=<id>&status=connected`, or `authorization=<id>&status=failed"
        "&error=<code>`: confirm with `GET /v1/authorizations/{id}`. Without one, or "
        "when the state is unknown, used or expired, a small HTML page says what happened."
    ),
    responses={
        303: {"description": "Back to `return_to` with `authorization` and `status`."},
        **_html_problems(
            InvalidState,
            IssuerMismatch,
            CodeExchangeFailed,
            AccountMismatch,
            ScopeNotGranted,
            NoRefreshToken,
            NoUserId,
            UpstreamError,
            ProviderRejectedClient,
            UpstreamUnavailable,
            KeyUnavailable,
        ),
    },
)
async def oauth_callback(request: Request, state: State) -> Response:
    params = {key: value for key, value in request.query_params.items() if len(value) <= 4096}
    try:
        outcome = await state.connect.callback(params)
    except Exception as error:
        return problem_page_or_raise(error)
    redirect = outcome.redirect_url()
    if redirect is not None:
        return RedirectResponse(redirect, status_code=303, headers=CALLBACK_HEADERS)
    return result_page(outcome)


@router.get(PAGE_STYLESHEET_PATH, include_in_schema=False)
async def page_stylesheet() -> FileResponse:
    return FileResponse(
        PAGE_STYLESHEET, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get(
    "/v1/oauth/reauthorize",
    response_class=HTMLResponse,
    summary="Open a re-authorization link (the user's browser; no API key)",
    description=(
        "The `authorization_url` of `reauthorization_required`, `no_refresh_token`, "
        "`code_exchange_failed`, `scope_not_granted` and `account_mismatch` points here. "
        "Each opening mints a fresh one-time state, bound to the link's account, and "
        "redirects to the provider with `login_hint`; consenting as another Google "
        "account then stores nothing and ends with `account_mismatch`."
    ),
    responses={
        **problem_responses(),
        303: {"description": "To the provider's consent page."},
        **_html_problems(InvalidLink),
    },
)
async def open_reauthorization_link(
    state: State,
    link: Annotated[
        str, Query(description=f"The signed link (at most {MAX_LINK_LENGTH} characters).")
    ] = "",
) -> Response:
    try:
        url = await state.links.open(link)
    except Exception as error:
        return problem_page_or_raise(error)
    return RedirectResponse(url, status_code=303, headers=CALLBACK_HEADERS)


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
    if outcome.account is None:
        assert outcome.error is not None
        return problem_page(outcome.error)
    who = html.escape(outcome.account.email or outcome.account.subject)
    text = f"<p><b>{who}</b> is connected. You can close this window.</p>"
    return _page("Account connected", text, 200)


def problem_page_or_raise(error: Exception) -> HTMLResponse:
    """A person's browser gets a page for any documented problem (an outage too)."""
    problem = as_broker_error(error)
    if problem is None:
        raise error
    return problem_page(problem)


def problem_page(error: BrokerError) -> HTMLResponse:
    text = f"<p>{html.escape(error.detail)}</p><p>Error: <code>{html.escape(error.code)}</code></p>"
    if error.authorization_url:
        text += f'<p><a href="{html.escape(error.authorization_url)}">Try again</a></p>'
    return _page(html.escape(error.title), text, error.status)


def _page(title: str, text: str, status: int) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<link rel='stylesheet' href='{PAGE_STYLESHEET_PATH}'></head><body>"
        f"<h1>{title}</h1>{text}<script src='{CALLBACK_PAGE_SCRIPT_PATH}'></script>"
        "</body></html>",
        status_code=status,
        headers=CALLBACK_HEADERS,
    )
