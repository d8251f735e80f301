"""Gmail API `users.messages.list`, one page per call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from token_broker.google.transport import (
    Upstream,
    UpstreamProtocolError,
    json_object,
    parse_retry_after,
)
from token_broker.kit.retry import TransientError

MAX_PAGE_SIZE = 500
_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})


class GmailUnauthorized(Exception):
    """401: the access token is expired or revoked."""


class GmailError(Exception):
    """A 4xx Gmail will not change its mind about. Carries Gmail's reason, never its body."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"gmail: HTTP {status} {reason}")


class GmailUnknownLabel(GmailError):
    """400 "Invalid label: <id>" naming one of the labelIds the broker sent (the caller's own)."""

    def __init__(self, label_id: str) -> None:
        super().__init__(400, "invalidArgument")
        self.label_id = label_id


_INVALID_LABEL = re.compile(r"^Invalid label: (.+)$")


@dataclass(frozen=True, slots=True)
class MessagePage:
    messages: list[dict[str, str]]
    next_page_token: str | None
    result_size_estimate: int


def _unknown_label(body: dict[str, Any], sent: list[str]) -> str | None:
    """The label Gmail refused, if it is one the broker sent (so nothing of Gmail is echoed)."""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    match = _INVALID_LABEL.match(message) if isinstance(message, str) else None
    if match is not None and match.group(1) in sent:
        return match.group(1)
    return None


def error_reason(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        errors = error.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            reason = errors[0].get("reason")
            if isinstance(reason, str) and reason.isascii() and len(reason) <= 64:
                return reason
        status = error.get("status")
        if isinstance(status, str) and status.isascii() and len(status) <= 64:
            return status
    return "unknown"


class GmailClient:
    def __init__(self, upstream: Upstream, api_base: str) -> None:
        self.upstream = upstream
        self.api_base = api_base.rstrip("/")

    async def list_messages(
        self,
        access_token: SecretStr,
        *,
        user_id: str = "me",
        q: str | None = None,
        label_ids: list[str] | None = None,
        include_spam_trash: bool = False,
        page_token: str | None = None,
        max_results: int = MAX_PAGE_SIZE,
    ) -> MessagePage:
        params: list[tuple[str, str]] = [("maxResults", str(max_results))]
        if q:
            params.append(("q", q))
        params.extend(("labelIds", label) for label in label_ids or ())
        if include_spam_trash:
            params.append(("includeSpamTrash", "true"))
        if page_token:
            params.append(("pageToken", page_token))
        response = await self.upstream.send(
            "gmail.messages.list",
            "GET",
            f"{self.api_base}/gmail/v1/users/{quote(user_id, safe='@')}/messages",
            params=params,
            headers={"Authorization": f"Bearer {access_token.get_secret_value()}"},
        )
        if response.status_code == 200:
            return self._page(json_object(response))
        body = self._error_body(response.status_code, response)
        if response.status_code == 401:
            raise GmailUnauthorized()
        reason = error_reason(body)
        if response.status_code == 400:
            label_id = _unknown_label(body, label_ids or [])
            if label_id is not None:
                raise GmailUnknownLabel(label_id)
        if response.status_code == 403 and reason in RATE_LIMIT_REASONS:
            raise TransientError(
                f"gmail: HTTP 403 {reason}",
                kind="rate_limited",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        raise GmailError(response.status_code, reason)

    @staticmethod
    def _error_body(status: int, response: Any) -> dict[str, Any]:
        try:
            return json_object(response)
        except UpstreamProtocolError:
            return {}

    @staticmethod
    def _page(body: dict[str, Any]) -> MessagePage:
        # An empty mailbox (or query) answers without `messages` and `nextPageToken`.
        raw = body.get("messages", [])
        if not isinstance(raw, list):
            raise UpstreamProtocolError("gmail: messages is not a list")
        messages = []
        for item in raw:
            message_id = item.get("id") if isinstance(item, dict) else None
            thread_id = item.get("threadId", "") if isinstance(item, dict) else None
            # Gmail's ids are short hex strings; holding them to a plain alphabet lets the
            # broker write them out without escaping (and refuses anything odd).
            if not (isinstance(message_id, str) and _ID.match(message_id)):
                raise UpstreamProtocolError("gmail: a message without a valid id")
            if not (isinstance(thread_id, str) and _ID.match(thread_id)):
                raise UpstreamProtocolError("gmail: a message without a valid threadId")
            messages.append({"id": message_id, "threadId": thread_id})
        token = body.get("nextPageToken")
        estimate = body.get("resultSizeEstimate", 0)
        return MessagePage(
            messages=messages,
            next_page_token=token if isinstance(token, str) and token else None,
            result_size_estimate=estimate if isinstance(estimate, int) else 0,
        )
