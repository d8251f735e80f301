"""Gmail's batch endpoint, `POST /batch/gmail/v1`: many calls in one `multipart/mixed` request.

As Google's batching guide describes it (https://developers.google.com/gmail/api/guides/batch):
each part of the request is `Content-Type: application/http` with an optional
`Content-ID`, and its body is a whole HTTP request with only the path of the URL;
the outer request's headers (except `Content-*`) apply to every part unless the
part sets its own, so an `Authorization` in a part wins. At most 100 calls per
batch. The answer is `200` with `multipart/mixed` parts in the same order, each an
`application/http` HTTP response with `Content-ID: <response-…>` echoing the
request part's id; each call has its own status, so one part can be a 404 or a
429 while the rest succeed. Each call counts against quota on its own.

The parts are dispatched to this same application (every Gmail route, its faults
and its counters), concurrently, as Google runs them. The wire details match
what google-api-python-client's `BatchHttpRequest` sends (LF line ends, ids of the
form `<uuid + n>`) and parses (CRLF inside each response, `response-` ids).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from google_sandbox.errors import google_api_error
from google_sandbox.faults import BATCH_PART, endpoint_of
from google_sandbox.quota import concurrency_body
from google_sandbox.state import SandboxState

BATCH_PATH = "/batch/gmail/v1"
MAX_CALLS = 100
REFUSED_PARTS = "sandbox.refused_parts"  # scope key: how many trailing parts were over the limit
PARSED_PARTS = "sandbox.batch_parts"


class MalformedBatch(Exception):
    pass


@dataclass(frozen=True)
class BatchCall:
    content_id: str | None
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


def parse_batch(content_type: str, body: bytes) -> list[BatchCall]:
    """The calls of a `multipart/mixed` batch body, in order."""
    if not content_type.lower().startswith("multipart/mixed") or "boundary=" not in content_type:
        raise MalformedBatch("a batch request must be multipart/mixed with a boundary")
    envelope = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not envelope.is_multipart():
        raise MalformedBatch("the batch body has no parts")
    calls = []
    for part in envelope.get_payload():
        if isinstance(part, str):
            raise MalformedBatch("a batch part must hold one HTTP request")
        payload = part.get_payload(decode=True)  # the part's bytes, as sent
        if not isinstance(payload, bytes):
            raise MalformedBatch("a batch part must hold one HTTP request")
        calls.append(_parse_call(part.get("Content-ID"), payload))
    return calls


def _parse_call(content_id: str | None, payload: bytes) -> BatchCall:
    payload = payload.lstrip(b"\r\n")
    head, body = payload, b""
    for separator in (b"\r\n\r\n", b"\n\n"):
        if separator in payload:
            head, _, body = payload.partition(separator)
            break
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
        raise MalformedBatch("a batch part does not start with an HTTP request line")
    method, target, _ = request_line
    url = urlsplit(target)
    if url.scheme or url.netloc:
        raise MalformedBatch("batch parts take a path, not a full URL")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name.strip().lower(), value.strip()))
    return BatchCall(content_id, method.upper(), url.path, url.query, headers, body)


def _merged_headers(outer: list[tuple[bytes, bytes]], call: BatchCall) -> list[tuple[bytes, bytes]]:
    own = {name for name, _ in call.headers}
    merged = [
        (name, value)
        for name, value in outer
        if not name.startswith(b"content-") and name.decode("latin-1") not in own
    ]
    merged += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in call.headers]
    return merged


async def _dispatch(request: Request, call: BatchCall) -> tuple[int, bytes]:
    """Run one call through this application, as its own request; its status and body."""
    root = request.scope.get("root_path", "")
    scope = {
        **{key: request.scope[key] for key in ("type", "http_version", "scheme", "server",
                                               "client") if key in request.scope},
        "method": call.method,
        "path": root + call.path,
        "raw_path": (root + call.path).encode(),
        "root_path": root,
        "query_string": call.query.encode(),
        "headers": _merged_headers(list(request.scope["headers"]), call),
        BATCH_PART: True,
    }  # fmt: skip
    status = 500
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": call.body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(scope, receive, send)
    return status, b"".join(chunks)


def _response_part(boundary: str, content_id: str | None, status: int, body: bytes) -> bytes:
    try:
        document = json.loads(body) if body else None
        text = json.dumps(document, indent=2, ensure_ascii=False) if document is not None else ""
    except ValueError:
        text = body.decode("utf-8", "replace")
    answer_id = "response-" + (content_id or "").strip("<>")
    if content_id:
        answer_id = f"<{answer_id}>"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return (
        f"--{boundary}\r\n"
        "Content-Type: application/http\r\n"
        f"Content-ID: {answer_id}\r\n"
        "\r\n"
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        "Vary: Origin\r\n"
        "Vary: X-Origin\r\n"
        "Vary: Referer\r\n"
        "\r\n"
        f"{text}\r\n"
    ).encode()


def batch_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.post(BATCH_PATH, summary="Gmail batch: multipart/mixed calls in, responses out")
    async def batch(request: Request) -> Response:
        calls = request.scope.get(PARSED_PARTS)
        if calls is None:
            try:
                calls = parse_batch(request.headers.get("content-type", ""), await request.body())
            except MalformedBatch as error:
                return google_api_error(400, "badRequest", str(error))
        if not calls:
            return google_api_error(400, "badRequest", "The batch request has no parts.")
        if len(calls) > MAX_CALLS:
            return google_api_error(
                400, "badRequest", f"A batch request may hold at most {MAX_CALLS} calls."
            )
        refused = int(request.scope.get(REFUSED_PARTS, 0))
        admitted = calls[: len(calls) - refused]
        results = await asyncio.gather(*(_dispatch(request, call) for call in admitted))
        too_many = json.dumps(concurrency_body()).encode()
        for call in calls[len(admitted) :]:
            state.record(endpoint_of(call.path) or "gmail.unknown", 429)
        results += [(429, too_many)] * (len(calls) - len(admitted))
        boundary = "batch_" + secrets.token_urlsafe(18).replace("-", "_")
        body = (
            b"".join(
                _response_part(boundary, call.content_id, status, content)
                for call, (status, content) in zip(calls, results, strict=True)
            )
            + f"--{boundary}--\r\n".encode()
        )
        return Response(body, media_type=f"multipart/mixed; boundary={boundary}")

    return router
