"""Mailbox changes since a cursor (Gmail's history, every page followed), as JSON or NDJSON."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from token_broker.errors import (
    AccountNotFound,
    CursorExpired,
    InternalError,
    InvalidCursor,
    ProviderRejectedClient,
    ReauthorizationRequired,
    TooManyForJson,
    UnknownLabel,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    caller_problems,
)
from token_broker.google.gmail_sync import HistoryPage
from token_broker.services.mailbox_changes import JSON_MAX_CHANGES, ChangesQuery, ChangesRun
from token_broker.web.dependencies import MessagesReader, State
from token_broker.web.problems import as_broker_error, problem_responses
from token_broker.web.routers.accounts import AccountRef
from token_broker.web.schemas import LABEL_ID, ChangeList

log = logging.getLogger("token_broker.changes")
router = APIRouter(prefix="/v1/accounts", tags=["messages"])
NDJSON = "application/x-ndjson"

_DESCRIPTION = f"""
Without `cursor`: the starting point, a cursor at the mailbox's current Gmail history id
(`users.getProfile`, 1 quota unit); `changes` is empty. With `cursor`: every change
since it (`users.history.list`, every page followed, 2 units a page of 500 records),
in history order, and the cursor to continue from. Keep the cursor and pass it next
time (for instance after a `mailbox.changed` webhook). Cursors are opaque and
tamper-evident, and belong to one account.

Gmail keeps history for about a week, sometimes only hours: a cursor older than that
is 410 `cursor_expired`, whose `cursor` is a fresh starting point. List the mailbox
again (`GET .../messages`), then continue from that cursor (changes made meanwhile
come again; applying a change twice is harmless).

`labelId` and `historyTypes` pass through to Gmail: only records touching messages
with that label, of those types.

With `Accept: application/x-ndjson`: one change per line, then a final line
`{{"status": "complete", "count", "pages", "cursor", "history_id"}}` (or `{{"status":
"failed", ..., "error": <problem>}}`: ask again with the same cursor). JSON answers
hold at most {JSON_MAX_CHANGES:,} changes (400 `too_many_for_json` beyond).
"""


@router.get(
    "/{account}/changes",
    response_model=ChangeList,
    summary="Changes to the mailbox since a cursor (Gmail's history)",
    description=_DESCRIPTION,
    responses={
        **problem_responses(
            *caller_problems(),
            AccountNotFound,
            InvalidCursor,
            UnknownLabel,
            TooManyForJson,
            ReauthorizationRequired,
            CursorExpired,
            UpstreamRateLimited,
            ProviderRejectedClient,
            UpstreamError,
            UpstreamUnavailable,
        ),
        200: {"content": {NDJSON: {"schema": {"type": "string"}}}},
    },
)
async def list_changes(
    request: Request,
    state: State,
    caller: MessagesReader,
    account: AccountRef,
    cursor: Annotated[
        str | None,
        Query(max_length=1024, pattern=r"^[A-Za-z0-9._-]+$", description="From a previous answer."),
    ] = None,
    label_id: Annotated[
        str | None,
        Query(alias="labelId", pattern=LABEL_ID, description="Only changes to messages with it."),
    ] = None,
    history_types: Annotated[
        list[Literal["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]],
        Query(alias="historyTypes", max_length=4, description="Only these kinds of change."),
    ] = [],  # noqa: B006  (FastAPI copies defaults per request)
) -> Response:
    run = state.changes.run(
        account, ChangesQuery(cursor, label_id, tuple(history_types)), caller.client_id
    )
    first = await run.start()
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(
            _stream(run, first), media_type=NDJSON, headers={"Cache-Control": "no-store"}
        )
    changes = await run.collect(first)
    return JSONResponse(
        {"changes": [change.as_dict() for change in changes], **_summary(run)},
        headers={"Cache-Control": "no-store"},
    )


def _summary(run: ChangesRun) -> dict[str, Any]:
    progress = run.progress
    return {
        "count": progress.count,
        "pages": progress.pages,
        "cursor": run.cursor,
        "history_id": progress.history_id,
    }


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n"


async def _stream(run: ChangesRun, first: HistoryPage | None) -> AsyncIterator[str]:
    outcome = "client_disconnected"
    progress = run.progress
    try:
        async for page in run.pages(first):
            if page:
                yield "".join(_line(change.as_dict()) for change in page)
        outcome = "ok"
        yield _line({"status": "complete", **_summary(run)})
    except Exception as error:
        problem = as_broker_error(error)
        if problem is None:
            log.exception("changes failed mid-stream")
            problem = InternalError()
        outcome = problem.code
        yield _line({"status": "failed", "count": progress.count, "pages": progress.pages,
                     "error": problem.problem()})  # fmt: skip
    finally:
        run.audit(outcome)
