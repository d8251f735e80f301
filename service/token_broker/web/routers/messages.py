"""Complete Gmail message listings, as one JSON document or an NDJSON stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import StringConstraints

from token_broker.errors import (
    AccountNotFound,
    AccountSuspended,
    AmbiguousAccount,
    InternalError,
    KeyUnavailable,
    ProviderRejectedClient,
    ReauthorizationRequired,
    ScopeNotAllowed,
    ScopeNotGranted,
    TooManyForJson,
    UnknownLabel,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    caller_problems,
)
from token_broker.google.gmail import MessagePage
from token_broker.scopes import gmail_scopes_for
from token_broker.services.details import DetailsQuery
from token_broker.services.listing import Listing, ListingQuery
from token_broker.web.dependencies import MessagesReader, State
from token_broker.web.problems import as_broker_error, problem_responses
from token_broker.web.routers.accounts import AccountRef
from token_broker.web.routers.message_details import (
    FormatParam,
    MetadataHeadersParam,
    details_answer,
)
from token_broker.web.schemas import LABEL_ID, PRINTABLE_TEXT, MessageDetailsList, MessageList

log = logging.getLogger("token_broker.listing")
router = APIRouter(prefix="/v1/accounts", tags=["messages"])
NDJSON = "application/x-ndjson"

_NDJSON_DOC = (
    'With `Accept: application/x-ndjson`: one `{"id", "threadId"}` object per line, '
    'streamed page by page, then one final line: `{"status": "complete", "count", '
    '"pages", "result_size_estimate"}` or `{"status": "failed", "count", "pages", '
    '"error": <problem>}`. A stream without that final line was cut short.\n\n'
    "With `format` (minimal, metadata, full, raw) each message is Gmail's message resource "
    "for that format, fetched in Gmail batches at the account's Gmail quota, in listing "
    "order; the answer (or the final line) adds `fetched`, `batches`, `not_fetched_count` "
    "and `not_fetched` (messages Gmail would not answer, e.g. 404 when deleted since the "
    "listing). JSON answers with details hold at most "
    "TOKEN_BROKER_GMAIL_DETAILS_JSON_MAX_MESSAGES (1,000) messages: beyond, 400 "
    "`too_many_for_json`; stream them as NDJSON."
)


@router.get(
    "/{account}/messages",
    response_model=MessageList | MessageDetailsList,
    summary="Every message matching a Gmail query, all pages followed",
    description=_NDJSON_DOC,
    responses={
        **problem_responses(
            *caller_problems(),
            AccountNotFound,
            UnknownLabel,
            AmbiguousAccount,
            ScopeNotAllowed,
            ScopeNotGranted,
            ReauthorizationRequired,
            AccountSuspended,
            TooManyForJson,
            UpstreamRateLimited,
            ProviderRejectedClient,
            UpstreamError,
            UpstreamUnavailable,
            KeyUnavailable,
        ),
        200: {"content": {NDJSON: {"schema": {"type": "string"}}}},
    },
)
async def list_messages(
    request: Request,
    state: State,
    caller: MessagesReader,
    account: AccountRef,
    q: Annotated[
        str | None,
        Query(max_length=2048, pattern=PRINTABLE_TEXT, description="Gmail search query."),
    ] = None,
    label_ids: Annotated[
        list[Annotated[str, StringConstraints(pattern=LABEL_ID)]],
        Query(alias="labelIds", max_length=20, description="Label ids; a message must carry all."),
    ] = [],  # noqa: B006  (FastAPI copies defaults per request)
    include_spam_trash: Annotated[bool, Query(alias="includeSpamTrash")] = False,
    limit: Annotated[
        int | None, Query(ge=1, le=10_000_000, description="Stop after this many messages.")
    ] = None,
    message_format: FormatParam = None,
    metadata_headers: MetadataHeadersParam = [],  # noqa: B006  (FastAPI copies defaults)
) -> Response:
    listing = state.listing.listing(
        account,
        ListingQuery(q=q, label_ids=label_ids, include_spam_trash=include_spam_trash, limit=limit),
        caller.client_id,
        accepted_scopes=gmail_scopes_for(query=q, message_format=message_format),
    )
    first = await listing.first_page()
    if message_format is not None:
        return await details_answer(
            state, listing, first, DetailsQuery(message_format, metadata_headers),
            ndjson=NDJSON in request.headers.get("accept", ""),
        )  # fmt: skip
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(
            stream(listing, first), media_type=NDJSON, headers={"Cache-Control": "no-store"}
        )
    pages = await listing.collect(first, _json_messages)
    progress = listing.progress
    tail = json.dumps(
        {
            "count": progress.count,
            "result_size_estimate": progress.result_size_estimate,
            "pages": progress.pages,
        },
        separators=(",", ":"),
    ).encode()
    parts = [b'{"messages":[', *_interleave(pages, b","), b"]," + tail[1:]]
    return StreamingResponse(
        _sent(parts),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Content-Length": str(sum(map(len, parts)))},
    )


# Ids are checked to a plain alphabet when read (token_broker.google.gmail): no escaping
# needed, and these are the listing's busiest lines.
_MESSAGE_LINE = '{{"id":"{id}","threadId":"{threadId}"}}\n'
_MESSAGE_OBJECT = '{{"id":"{id}","threadId":"{threadId}"}}'


def _json_messages(page: list[dict[str, str]]) -> bytes:
    return ",".join(_MESSAGE_OBJECT.format_map(message) for message in page).encode()


def _interleave(parts: list[bytes], separator: bytes) -> list[bytes]:
    joined = [separator] * (2 * len(parts) - 1) if parts else []
    joined[::2] = parts
    return joined


async def _sent(parts: list[bytes]) -> AsyncIterator[bytes]:
    """The held pages, handed to the server one by one (never joined into one copy)."""
    parts.reverse()
    while parts:
        yield parts.pop()


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"


async def stream(listing: Listing, first: MessagePage) -> AsyncIterator[str]:
    outcome = "client_disconnected"
    progress = listing.progress
    try:
        async for page in listing.pages(first):
            if page:
                yield "".join(_MESSAGE_LINE.format_map(message) for message in page)
        outcome = "ok"
        yield _line(
            {
                "status": "complete",
                "count": progress.count,
                "pages": progress.pages,
                "result_size_estimate": progress.result_size_estimate,
            }
        )
    except Exception as error:
        problem = as_broker_error(error)
        if problem is None:
            log.exception("listing failed mid-stream")
            problem = InternalError()
        outcome = problem.code
        yield _line({"status": "failed", "count": progress.count, "pages": progress.pages,
                     "error": problem.problem()})  # fmt: skip
    finally:
        listing.audit(outcome)
