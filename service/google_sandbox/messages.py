"""Gmail's `users.messages.get` in its four formats, over each user's seeded mailbox.

Every seeded message gets a realistic body, derived from its id alone (so the same
mailbox always renders the same bytes): RFC 822 headers, a `multipart/alternative`
text and HTML body, and for some messages a `multipart/mixed` envelope with a
small PDF attachment. The formats are Google's (Gmail API reference,
`users.messages.get` and the `Format` enum,
https://developers.google.com/gmail/api/reference/rest/v1/users.messages/get):

- `minimal`: id, threadId, labelIds, snippet, sizeEstimate, historyId, internalDate;
- `metadata`: the same plus `payload: {mimeType, headers}`, the headers narrowed to
  the repeated `metadataHeaders` (case-insensitive) when given;
- `full` (the default): `payload` as the parsed MIME tree (partId, mimeType,
  filename, headers, body with base64url `data`, or an `attachmentId` for
  attachments, and nested `parts`);
- `raw`: the whole RFC 822 message, base64url, in `raw`; no payload.

`full` and `raw` are refused with 403 for a token holding only the
`gmail.metadata` scope, as Google documents ("Format cannot be used when accessing
the api using the gmail.metadata scope"). A deleted message, or an id the mailbox
never had, is Gmail's 404 `notFound`.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from google_sandbox.errors import google_api_error
from google_sandbox.gmail_access import gmail_caller
from google_sandbox.mailbox import Message
from google_sandbox.records import SandboxUser
from google_sandbox.scopes import GMAIL_METADATA, MESSAGES_GET_SCOPES, SIGN_IN_SCOPES
from google_sandbox.state import SandboxState

FORMATS = ("minimal", "metadata", "full", "raw")
_GET_METHOD = "caribou.api.proto.MailboxService.GetMessage"
# A token may still carry the short sign-in names it was asked for.
SIGN_IN = SIGN_IN_SCOPES | {"email", "profile"}
_PARAGRAPHS = (
    "Thanks for the quick turnaround on this.",
    "Please find the details below and let me know if anything looks off.",
    "We moved the review to Thursday; the agenda is unchanged.",
    "The invoice is attached for your records.",
    "Could you confirm the budget before the end of the week?",
    "Here is the updated schedule for the trip.",
    "The release notes are in the usual place.",
)


@dataclass
class Part:
    """One MIME part: a leaf with a body, or a multipart container with children."""

    mime_type: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    filename: str = ""
    children: list[Part] = field(default_factory=list)
    boundary: str = ""
    attachment_id: str | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _text_parts(message: Message, rng: random.Random) -> Part:
    paragraphs = [message.snippet.capitalize() + ".", *rng.sample(_PARAGRAPHS, 2)]
    name = message.sender.split("<")[0].strip() or message.sender
    plain = "\r\n\r\n".join([*paragraphs, f"-- \r\n{name}"]) + "\r\n"
    html = "".join(f"<p>{p}</p>" for p in [*paragraphs, f"-- <br>{name}"])
    html = f'<div dir="ltr">{html}</div>\r\n'
    boundary = f"000000000000{message.id[-12:]}a"
    return Part(
        "multipart/alternative",
        [("Content-Type", f'multipart/alternative; boundary="{boundary}"')],
        boundary=boundary,
        children=[
            Part("text/plain", [("Content-Type", 'text/plain; charset="UTF-8"')], plain.encode()),
            Part("text/html", [("Content-Type", 'text/html; charset="UTF-8"')], html.encode()),
        ],
    )


def build_mime(message: Message, owner: str) -> Part:
    """The message's MIME tree, top-level headers included; the same every time."""
    seed = int.from_bytes(hashlib.sha256(message.id.encode()).digest()[:8], "big")
    rng = random.Random(seed)  # noqa: S311  (test data, not secrecy)
    sent = datetime.fromtimestamp(message.internal_date, UTC)
    headers = [
        ("Delivered-To", owner),
        ("Received", f"by 2002:a05:6a10:{seed % 0xFFFF:x} with SMTP id {message.id}; "
                     f"{format_datetime(sent)}"),
        ("MIME-Version", "1.0"),
        ("Date", format_datetime(sent)),
        ("Message-ID", f"<{message.id}.{message.thread_id}@mail.sandbox.example>"),
        ("Subject", message.subject),
        ("From", message.sender),
        ("To", message.to),
    ]  # fmt: skip
    if message.thread_id != message.id:
        reference = f"<{message.thread_id}.{message.thread_id}@mail.sandbox.example>"
        headers += [("In-Reply-To", reference), ("References", reference)]
    body = _text_parts(message, rng)
    if rng.random() < 0.2:
        pdf = b"%PDF-1.4\n" + rng.randbytes(240) + b"\n%%EOF\n"
        filename = f"document-{message.id[-6:]}.pdf"
        attachment = Part(
            "application/pdf",
            [("Content-Type", f'application/pdf; name="{filename}"'),
             ("Content-Disposition", f'attachment; filename="{filename}"'),
             ("Content-Transfer-Encoding", "base64"),
             ("X-Attachment-Id", f"f_{message.id[-8:]}")],
            pdf, filename=filename,
            attachment_id="ANGjdJ" + _b64url(hashlib.sha256(pdf).digest()).rstrip("="),
        )  # fmt: skip
        boundary = f"000000000000{message.id[-12:]}m"
        return Part(
            "multipart/mixed",
            [*headers, ("Content-Type", f'multipart/mixed; boundary="{boundary}"')],
            boundary=boundary,
            children=[body, attachment],
        )
    body.headers = [*headers, *body.headers]
    return body


def render_rfc822(part: Part) -> bytes:
    """The part as RFC 822 bytes (CRLF line ends), as Gmail stores the message."""
    lines = [f"{name}: {value}" for name, value in part.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if not part.children:
        if part.attachment_id is not None:
            encoded = base64.encodebytes(part.body).replace(b"\n", b"\r\n")
            return head + encoded
        return head + part.body
    chunks = [head]
    for child in part.children:
        chunks.append(f"--{part.boundary}\r\n".encode())
        chunks.append(render_rfc822(child))
        chunks.append(b"\r\n")
    chunks.append(f"--{part.boundary}--\r\n".encode())
    return b"".join(chunks)


def _payload(part: Part, part_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"size": 0 if part.children else len(part.body)}
    if not part.children:
        if part.attachment_id is not None:
            body = {"attachmentId": part.attachment_id, "size": len(part.body)}
        else:
            body["data"] = _b64url(part.body)
    payload: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.mime_type,
        "filename": part.filename,
        "headers": [{"name": name, "value": value} for name, value in part.headers],
        "body": body,
    }
    if part.children:
        prefix = f"{part_id}." if part_id else ""
        payload["parts"] = [
            _payload(child, f"{prefix}{index}") for index, child in enumerate(part.children)
        ]
    return payload


def message_resource(
    message: Message, owner: str, message_format: str, metadata_headers: list[str]
) -> dict[str, Any]:
    """Gmail's Message resource for `message` in `message_format`, keys in Gmail's order."""
    mime = build_mime(message, owner)
    raw = render_rfc822(mime)
    resource: dict[str, Any] = {
        "id": message.id,
        "threadId": message.thread_id,
        "labelIds": sorted(message.labels),
        "snippet": message.snippet,
    }
    if message_format == "metadata":
        wanted = {name.lower() for name in metadata_headers}
        headers = [
            {"name": name, "value": value}
            for name, value in mime.headers
            if not wanted or name.lower() in wanted
        ]
        resource["payload"] = {"mimeType": mime.mime_type}
        if headers:
            resource["payload"]["headers"] = headers
    elif message_format == "full":
        resource["payload"] = _payload(mime, "")
    resource["sizeEstimate"] = len(raw)
    if message_format == "raw":
        resource["raw"] = _b64url(raw)
    seeded_history_id = 1_000_000 + int(message.id[-7:], 16) % 9_000_000
    resource["historyId"] = str(message.history_id or seeded_history_id)
    resource["internalDate"] = str(message.internal_date * 1000)
    return resource


def find_message(user: SandboxUser, message_id: str) -> Message | None:
    if message_id in user.deleted:
        return None
    return user.message_index.get(message_id)


def messages_router(state: SandboxState) -> APIRouter:
    router = APIRouter(tags=["gmail"])

    @router.get("/gmail/v1/users/{user_id}/messages/{message_id}", summary="users.messages.get")
    async def get_message(request: Request, user_id: str, message_id: str) -> Response:
        caller = gmail_caller(
            state, request, user_id, method=_GET_METHOD, accepted=MESSAGES_GET_SCOPES
        )
        if isinstance(caller, Response):
            return caller
        query = request.query_params
        message_format = query.get("format", "full").lower()
        if message_format not in FORMATS:
            return google_api_error(
                400, "invalidArgument", f"Invalid value at 'format' ({query.get('format')})"
            )
        if message_format in ("full", "raw") and caller.scopes <= {GMAIL_METADATA} | SIGN_IN:
            return google_api_error(
                403, "forbidden", f"Metadata scope doesn't allow format {message_format.upper()}"
            )
        message = find_message(caller.user, message_id)
        if message is None:
            return google_api_error(404, "notFound", "Requested entity was not found.")
        resource = message_resource(
            message, caller.user.email, message_format, query.getlist("metadataHeaders")
        )
        return JSONResponse(resource)

    @router.post(
        "/_sandbox/users/{email}/messages/{message_id}/delete",
        tags=["sandbox control"],
        summary="Delete a message (later gets answer 404; listings already cached keep it)",
    )
    async def delete_message(email: str, message_id: str) -> dict[str, bool]:
        user = state.users.get(email.lower())
        if user is None or message_id not in user.message_index:
            return {"deleted": False}
        user.deleted.add(message_id)
        return {"deleted": True}

    return router
