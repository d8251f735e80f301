"""Connected accounts: list (by status and reason), read, delete, and add scopes
(incremental authorization)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from token_broker.errors import (
    AccountNotFound,
    AmbiguousAccount,
    InvalidCursor,
    KeyUnavailable,
    PayloadTooLarge,
    ReturnToNotAllowed,
    ScopeNotAllowed,
    caller_problems,
)
from token_broker.services.grant_health import StatusReason
from token_broker.web.dependencies import AccountsReader, AccountsWriter, State
from token_broker.web.problems import problem_responses
from token_broker.web.schemas import (
    TOKEN_TEXT,
    Account,
    AccountPage,
    Authorization,
    Deleted,
    ScopesRequest,
)

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

# A subject id or an email: no slash, backslash, space or control character.
ACCOUNT_REF = r"^[^\x00-\x20\x7f/\\]{1,320}$"

AccountRef = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        pattern=ACCOUNT_REF,
        description="The account's provider subject id (Google `sub`) or its email address.",
        examples=["alice@example.com", "109876543210987654321"],
    ),
]
AUTH_PROBLEMS = caller_problems()


@router.get(
    "",
    response_model=AccountPage,
    summary="List connected accounts",
    responses=problem_responses(*AUTH_PROBLEMS, InvalidCursor),
)
async def list_accounts(
    state: State,
    _caller: AccountsReader,
    email: Annotated[str | None, Query(max_length=320, pattern=TOKEN_TEXT)] = None,
    status: Literal["active", "revoked", "suspended"] | None = None,
    reason: Annotated[
        StatusReason | None, Query(description="Only accounts with this status_reason.")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=512,
            pattern=r"^[A-Za-z0-9_.-]+$",
            description="`next_cursor` of the previous page, unchanged (opaque and signed).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AccountPage:
    rows, next_cursor = await state.accounts.page(
        email=email, status=status, cursor=cursor, limit=limit, reason=reason
    )
    return AccountPage(items=[Account.of(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{account}",
    response_model=Account,
    summary="Read one account",
    responses=problem_responses(*AUTH_PROBLEMS, AccountNotFound, AmbiguousAccount),
)
async def get_account(state: State, _caller: AccountsReader, account: AccountRef) -> Account:
    return Account.of(await state.accounts.get(account))


@router.delete(
    "/{account}",
    response_model=Deleted,
    summary="Revoke the grant at the provider, then delete the account and its secrets",
    responses=problem_responses(*AUTH_PROBLEMS, AccountNotFound, AmbiguousAccount, KeyUnavailable),
)
async def delete_account(state: State, caller: AccountsWriter, account: AccountRef) -> Deleted:
    deletion = await state.accounts.delete(account, client_id=caller.client_id)
    return Deleted(deleted=True, upstream_revoked=deletion.upstream_revoked)


@router.post(
    "/{account}/authorizations",
    status_code=201,
    response_model=Authorization,
    summary="Add scopes to a connected account (incremental authorization)",
    description=(
        "Starts a connect flow for this account that asks Google for `scopes` with "
        "`include_granted_scopes=true` and the account's `login_hint`, bound to its subject: "
        "completed as another Google account it stores nothing (`account_mismatch`); "
        "completed without one of `scopes` granted it stores nothing (`scope_not_granted`); "
        "completed, the account's scopes grow (the same account, no new one). Follow it "
        "like `POST /v1/authorizations`: send the user to `authorization_url`, confirm "
        "with `GET /v1/authorizations/{id}`."
    ),
    responses=problem_responses(
        *AUTH_PROBLEMS,
        AccountNotFound,
        AmbiguousAccount,
        ReturnToNotAllowed,
        ScopeNotAllowed,
        PayloadTooLarge,
    ),
)
async def add_scopes(
    state: State, caller: AccountsWriter, account: AccountRef, body: ScopesRequest
) -> Authorization:
    started = await state.authorizations.add_scopes(
        client_id=caller.client_id, reference=account, scopes=body.scopes, return_to=body.return_to
    )
    return Authorization(
        id=started.id,
        authorization_url=started.authorization_url,
        state=started.state,
        expires_at=started.expires_at,
    )
