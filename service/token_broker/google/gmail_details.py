"""Gmail `users.messages.get`, one at a time or many in one batch request, and Gmail's unit costs.

Google's facts behind this module:

- usage limits (https://developers.google.com/gmail/api/reference/quota): every
  method costs quota units, `messages.list` 5, `messages.get` 5, `history.list`
  2, `getProfile` 1 (`watch` 100 and `stop` 50 as other projects' tables give them),
  against a per-user limit a minute;
- batching (https://developers.google.com/gmail/api/guides/batch): up to 100 calls
  in one `multipart/mixed` POST to `/batch/gmail/v1`, each part an
  `application/http` request holding only the URL's path; the outer request's
  headers (Authorization) apply to every part; the answer has one
  `application/http` response per part, matched by `Content-ID: <response-…>`,
  each with its own status; a batch of n calls counts as n calls against quota,
  and batches above 50 are likely to be rate limited;
- errors (https://developers.google.com/gmail/api/guides/handle-errors): 404 for a
  message that no longer exists, 429 and 403 `rateLimitExceeded` /
  `userRateLimitExceeded` when over quota or with too many concurrent requests.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32
from typing import Any, Literal
from urllib.parse import quote, urlencode

from pydantic import SecretStr

from token_broker.google.gmail import (
    RATE_LIMIT_REASONS,
    GmailError,
    GmailUnauthorized,
    error_reason,
)
from token_broker.google.transport import (
    TRANSIENT_STATUSES,
    Upstream,
    UpstreamProtocolError,
    json_object,
    parse_retry_after,
)
from token_broker.kit.retry import TransientError

GmailMethod = Literal[
    "messages.list", "messages.get", "history.list", "getProfile", "watch", "stop"
]
# Quota units each call costs (Google's usage-limits page); a batch costs its parts'.
QUOTA_UNITS: dict[GmailMethod, int] = {
    "messages.list": 5,
    "messages.get": 5,
    "history.list": 2,
    "getProfile": 1,
    # watch and stop as public code's quota tables give them; the excerpts of Google's
    # page at hand stopped short of these rows.
    "watch": 100,
    "stop": 50,
}
MessageFormat = Literal["minimal", "metadata", "full", "raw"]
MESSAGE_FORMATS: tuple[MessageFormat, ...] = ("minimal", "metadata", "full", "raw")
MAX_BATCH_CALLS = 100  # Gmail's limit per batch request


class GmailMessageNotFound(Exception):
    """404: the message does not exist (any more)."""


@dataclass(frozen=True, slots=True)
class PartFailure:
    """One call of a batch that did not answer a message: Gmail's status and reason."""

    status: int
    reason: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        """Worth retrying on its own: rate limited, a server error, or a garbled part."""
        return (
            self.status == 0  # no part, or a garbled one, for this call
            or self.status in TRANSIENT_STATUSES
            or (self.status == 403 and self.reason in RATE_LIMIT_REASONS)
        )

    @property
    def kind(self) -> Literal["rate_limited", "server_error", "malformed"]:
        if self.status == 429 or self.reason in RATE_LIMIT_REASONS:
            return "rate_limited"
        return "malformed" if self.status == 0 else "server_error"


def _query(message_format: MessageFormat, metadata_headers: list[str]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [("format", message_format)]
    if message_format == "metadata":
        params += [("metadataHeaders", name) for name in metadata_headers]
    return params


def _message(body: Any, message_id: str) -> dict[str, Any]:
    if not isinstance(body, dict) or body.get("id") != message_id:
        raise UpstreamProtocolError("gmail: a message answer without the id asked for")
    return body


class GmailMessages:
    def __init__(self, upstream: Upstream, api_base: str) -> None:
        self.upstream = upstream
        self.api_base = api_base.rstrip("/")

    async def get(
        self,
        access_token: SecretStr,
        message_id: str,
        *,
        message_format: MessageFormat,
        metadata_headers: list[str],
    ) -> dict[str, Any]:
        """One message; raises GmailMessageNotFound, GmailUnauthorized, TransientError,
        GmailError or UpstreamProtocolError."""
        response = await self.upstream.send(
            "gmail.messages.get",
            "GET",
            f"{self.api_base}/gmail/v1/users/me/messages/{quote(message_id, safe='')}",
            params=_query(message_format, metadata_headers),
            headers={"Authorization": f"Bearer {access_token.get_secret_value()}"},
        )
        if response.status_code == 200:
            return _message(json_object(response), message_id)
        failure = _failure(response.status_code, response.content, response.headers)
        _raise(failure)
        raise AssertionError("unreachable")

    async def batch_get(
        self,
        access_token: SecretStr,
        message_ids: list[str],
        *,
        message_format: MessageFormat,
        metadata_headers: list[str],
    ) -> list[dict[str, Any] | PartFailure]:
        """Each message (or why not), in the order asked, from one batch request.

        A failure of the whole request raises as `get` does; a failed part is a
        `PartFailure` in its place.
        """
        if not 1 <= len(message_ids) <= MAX_BATCH_CALLS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_CALLS} calls")
        boundary = "batch_" + secrets.token_hex(16)
        query = urlencode(_query(message_format, metadata_headers))
        path = "/gmail/v1/users/me/messages/"
        body = (
            "".join(
                f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{index}>\r\n"
                f"\r\nGET {path}{quote(message_id, safe='')}?{query} HTTP/1.1\r\n\r\n"
                for index, message_id in enumerate(message_ids)
            )
            + f"--{boundary}--\r\n"
        )
        response = await self.upstream.send(
            "gmail.batch",
            "POST",
            f"{self.api_base}/batch/gmail/v1",
            content=body.encode(),
            headers={
                "Authorization": f"Bearer {access_token.get_secret_value()}",
                "Content-Type": f"multipart/mixed; boundary={boundary}",
            },
        )
        if response.status_code != 200:
            failure = _failure(response.status_code, response.content, response.headers)
            if failure.status == 404:  # the batch endpoint itself is missing: not a message
                raise GmailError(404, failure.reason)
            _raise(failure)
        answers = _split_answer(response.headers.get("content-type", ""), response.content)
        results: list[dict[str, Any] | PartFailure] = []
        for index, message_id in enumerate(message_ids):
            answer = answers.get(index)
            if answer is None:
                results.append(PartFailure(0, "missing"))
                continue
            status, headers, content = answer
            if status != 200:
                results.append(_failure(status, content, headers))
                continue
            try:
                results.append(_message(json.loads(content), message_id))
            except (ValueError, UpstreamProtocolError):
                results.append(PartFailure(0, "malformed"))
        return results


def _failure(status: int, content: bytes, headers: Any) -> PartFailure:
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        body = {}
    reason = error_reason(body) if isinstance(body, dict) else "unknown"
    return PartFailure(status, reason, parse_retry_after(headers.get("retry-after")))


def _raise(failure: PartFailure) -> None:
    if failure.status == 401:
        raise GmailUnauthorized()
    if failure.status == 404:
        raise GmailMessageNotFound()
    if failure.transient:
        raise TransientError(
            f"gmail: HTTP {failure.status} {failure.reason}",
            kind=failure.kind,
            retry_after=failure.retry_after,
        )
    raise GmailError(failure.status, failure.reason)


def _split_answer(
    content_type: str, content: bytes
) -> dict[int, tuple[int, dict[str, str], bytes]]:
    """A batch answer's parts by the index in their Content-ID: status, headers, body."""
    if not content_type.lower().startswith("multipart/mixed"):
        raise UpstreamProtocolError("gmail: a batch answer that is not multipart/mixed")
    envelope = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + content
    )
    parts = envelope.get_payload()
    if not envelope.is_multipart() or not isinstance(parts, list):
        raise UpstreamProtocolError("gmail: a batch answer without parts")
    answers: dict[int, tuple[int, dict[str, str], bytes]] = {}
    for part in parts:
        if isinstance(part, str):
            continue
        index = _index_of(part.get("Content-ID", ""))
        payload = part.get_payload(decode=True)  # the part's bytes, as sent
        if index is None or not isinstance(payload, bytes):
            continue
        head, body = _head_and_body(payload)
        lines = head.strip("\n").split("\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[1].isdigit():
            continue
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        answers[index] = (int(status_line[1]), headers, body)
    return answers


def _head_and_body(payload: bytes) -> tuple[str, bytes]:
    """An embedded HTTP message's start line and headers (text), and its body (bytes)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = payload.partition(separator)
        if found:
            return head.decode("latin-1").replace("\r\n", "\n"), body
    return payload.decode("latin-1").replace("\r\n", "\n"), b""


def _index_of(content_id: str) -> int | None:
    value = content_id.strip().strip("<>")
    value = value.removeprefix("response-")
    return int(value) if value.isdigit() else None
