"""Gmail message details: one message, and the answers of listings asked `format=...`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import StringConstraints

from token_broker.errors import (
    AccountNotFound,
    AccountSuspended,
    InternalError,
    KeyUnavailable,
    MessageNotFound,
    ProviderRejectedClient,
    ReauthorizationRequired,
    ScopeNotAllowed,
    ScopeNotGranted,
    TooManyForJson,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    caller_problems,
)
from token_broker.google.gmail import MessagePage
from token_broker.scopes import gmail_scopes_for
from token_broker.services.details import AccountCalls, DetailsFetch, DetailsQuery
from token_broker.services.listing import Listing
from token_broker.web.dependencies import MessagesReader, State
from token_broker.web.problems import as_broker_error, problem_responses
from token_broker.web.routers.accounts import AccountRef
from token_broker.web.schemas import GmailMessage

log = logging.getLogger("token_broker.listing")
router = APIRouter(prefix="/v1/accounts", tags=["messages"])
NDJSON = "application/x-ndjson"

FormatParam = Annotated[
    Literal["minimal", "metadata", "full", "raw"] | None,
    Query(
        alias="format",
        description="Gmail's message format. Absent: ids and thread ids only. `minimal`: "
        "labels and snippet; `metadata`: headers (narrowed by `metadataHeaders`); `full`: "
        "the parsed MIME tree; `raw`: the RFC 822 message, base64url.",
    ),
]
MetadataHeadersParam = Annotated[
    list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,100}$")]],
    Query(
        alias="metadataHeaders",
        max_length=50,
        description="With format=metadata: only these headers (repeatable).",
    ),
]
MessageId = Annotated[
    str,
    Path(
        pattern=r"^[0-9A-Za-z_-]{1,64}$",
        description="A Gmail message id, from a listing.",
        examples=["18c0a6750012af3e"],
    ),
]


@router.get(
    "/{account}/messages/{message_id}",
    response_model=GmailMessage,
    summary="One Gmail message (users.messages.get), in any of Gmail's formats",
    description="Gmail's message resource, unchanged. Spends 5 units of the account's Gmail "
    "quota; when the account's quota is spoken for longer than the Gmail budget, 429 "
    "`upstream_rate_limited` with Retry-After.",
    responses=problem_responses(
        *caller_problems(),
        AccountNotFound,
        MessageNotFound,
        ScopeNotAllowed,
        ScopeNotGranted,
        ReauthorizationRequired,
        AccountSuspended,
        UpstreamRateLimited,
        ProviderRejectedClient,
        UpstreamError,
        UpstreamUnavailable,
        KeyUnavailable,
    ),
)
async def get_message(
    state: State,
    caller: MessagesReader,
    account: AccountRef,
    message_id: MessageId,
    message_format: Annotated[
        Literal["minimal", "metadata", "full", "raw"],
        Query(alias="format", description="Gmail's message format (Gmail's default: full)."),
    ] = "full",
    metadata_headers: MetadataHeadersParam = [],  # noqa: B006  (FastAPI copies defaults)
) -> Response:
    message = await state.details.one(
        account,
        message_id,
        DetailsQuery(message_format, metadata_headers),
        caller.client_id,
        accepted_scopes=gmail_scopes_for(query=None, message_format=message_format),
    )
    return JSONResponse(message, headers={"Cache-Control": "no-store"})


async def details_answer(
    state: State, listing: Listing, first: MessagePage, query: DetailsQuery, *, ndjson: bool
) -> Response:
    """A listing's answer with each message's details (format=...), JSON or NDJSON."""
    account_id, email, token = listing.account
    fetch = state.details.fetch(
        AccountCalls(
            state.details, listing.reference, listing.client_id,
            account_id=account_id, email=email, token=token,
        ),
        query,
    )  # fmt: skip
    if ndjson:
        return StreamingResponse(
            _stream(listing, first, fetch), media_type=NDJSON, headers={"Cache-Control": "no-store"}
        )
    try:
        references = await _references_for_json(listing, first, state.details.json_max_messages)
        messages: list[dict[str, Any]] = []
        async for batch in fetch.messages(_one_page(references)):
            messages.extend(batch)
    except Exception as error:
        _audit(listing, fetch, getattr(as_broker_error(error), "code", "internal_error"))
        raise
    _audit(listing, fetch, "ok")
    progress = listing.progress
    return JSONResponse(
        {
            "messages": messages,
            "count": progress.count,
            "result_size_estimate": progress.result_size_estimate,
            "pages": progress.pages,
            **fetch.progress.summary(),
        },
        headers={"Cache-Control": "no-store"},
    )


async def _references_for_json(
    listing: Listing, first: MessagePage, cap: int
) -> list[dict[str, str]]:
    # Ids first (cheap: 5 units a page of 500): no detail is fetched for an answer
    # that would be refused.
    references: list[dict[str, str]] = []
    async for page in listing.pages(first):
        references.extend(page)
        if len(references) > cap:
            raise TooManyForJson(
                f"This listing has more than {cap} messages, the most a JSON answer with details "
                f"holds (TOKEN_BROKER_GMAIL_DETAILS_JSON_MAX_MESSAGES); ask with "
                f"`Accept: {NDJSON}`, or pass limit <= {cap}.",
                max_messages=cap,
            )
    return references


async def _one_page(references: list[dict[str, str]]) -> AsyncIterator[list[dict[str, str]]]:
    yield references


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n"


async def _stream(listing: Listing, first: MessagePage, fetch: DetailsFetch) -> AsyncIterator[str]:
    outcome = "client_disconnected"
    progress = listing.progress
    try:
        async for batch in fetch.messages(listing.pages(first)):
            if batch:
                yield "".join(_line(message) for message in batch)
        outcome = "ok"
        yield _line(
            {
                "status": "complete",
                "count": progress.count,
                "pages": progress.pages,
                "result_size_estimate": progress.result_size_estimate,
                **fetch.progress.summary(),
            }
        )
    except Exception as error:
        problem = as_broker_error(error)
        if problem is None:
            log.exception("listing with details failed mid-stream")
            problem = InternalError()
        outcome = problem.code
        yield _line({"status": "failed", "count": progress.count, "pages": progress.pages,
                     **fetch.progress.summary(), "error": problem.problem()})  # fmt: skip
    finally:
        _audit(listing, fetch, outcome)


def _audit(listing: Listing, fetch: DetailsFetch, outcome: str) -> None:
    summary = fetch.progress
    listing.audit_detail.update(
        fetched=summary.fetched, batches=summary.batches, not_fetched=summary.not_fetched_count,
        detail_retries=summary.retries,
    )  # fmt: skip
    listing.audit(outcome)
