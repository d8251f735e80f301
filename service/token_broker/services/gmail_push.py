"""`POST /v1/gmail/push`: Gmail's notifications, as Cloud Pub/Sub pushes them, checked and recorded.

In order: the OIDC token (`google/push_tokens.py`: Google's signature, issuer, audience,
service account, expiry), then the body (`{"message": {"data": base64 JSON
{"emailAddress", "historyId"}, "messageId"}}`), then, in one transaction, the receipt
and the account's coalescing window (`services/mailbox_notices.py`). Nothing here calls
Gmail, so the answer is quick (Pub/Sub counts slow answers as failures and slows down).

Outcomes, each counted (`token_broker_gmail_pushes_total`):
- a bad token, or a replay (a message id already received with the same token): 401,
  which Pub/Sub would retry, but a genuine delivery never looks like that;
- a body that is not a Gmail notification: 400;
- Pub/Sub delivering a message again (same id, another token; at-least-once): 204,
  nothing done twice;
- an address no connected account has, or an account not watched (revoked): 204 and
  dropped, so Pub/Sub does not redeliver it for days;
- otherwise 204, and the account's window opened or joined.

A token alone is not single use: Pub/Sub reuses one for up to an hour across pushes.
Receipts are kept for `RECEIPTS_KEPT` (longer than any token lives) and then purged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from token_broker.errors import InvalidPush, PushUnauthenticated
from token_broker.google.push_tokens import PushTokenInvalid, PushTokens
from token_broker.kit.clock import utcnow
from token_broker.observability.metrics import Metrics
from token_broker.services.account_states import PROVIDER
from token_broker.services.mailbox_notices import MailboxNotices
from token_broker.store.database import Database
from token_broker.store.mailbox_watches import PushReceiptRepository
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.push")

RECEIPTS_KEPT = timedelta(hours=3)
_MESSAGE_ID = re.compile(r"^[\x21-\x7e]{1,100}$")
_HISTORY_ID = re.compile(r"^[0-9]{1,20}$")
Outcome = Literal["accepted", "coalesced", "duplicate", "unknown_address", "not_watched"]


@dataclass(frozen=True)
class GmailNotification:
    message_id: str
    email: str
    history_id: str


def _field(value: Any, *names: str) -> Any:
    for name in names:
        if isinstance(value, dict) and name in value:
            return value[name]
    return None


def parse_push(body: bytes) -> GmailNotification:
    """The Gmail notification a Pub/Sub push carries; InvalidPush if it carries none."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidPush("The body is not JSON.") from None
    message = _field(envelope, "message")
    message_id = _field(message, "messageId", "message_id")
    data = _field(message, "data")
    if not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id):
        raise InvalidPush("The push has no message.messageId.")
    if not isinstance(data, str) or len(data) > 4096:
        raise InvalidPush("The push has no message.data.")
    try:
        # Pub/Sub sends standard base64; Gmail's guide says base64url: take either.
        raw = base64.b64decode(data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4))
        notification = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidPush("message.data is not base64-encoded JSON.") from None
    email = _field(notification, "emailAddress")
    history_id = _field(notification, "historyId")
    # Gmail sends the history id as a number in practice, a string in its guide.
    if isinstance(history_id, int) and not isinstance(history_id, bool):
        history_id = str(history_id)
    if not isinstance(email, str) or "@" not in email or len(email) > 320:
        raise InvalidPush("message.data has no emailAddress.")
    if not isinstance(history_id, str) or not _HISTORY_ID.match(history_id):
        raise InvalidPush("message.data has no historyId.")
    return GmailNotification(message_id, email.strip().lower(), history_id)


class PushReceiver:
    def __init__(
        self, database: Database, tokens: PushTokens, notices: MailboxNotices, metrics: Metrics
    ) -> None:
        self.database = database
        self.tokens = tokens
        self.notices = notices
        self.metrics = metrics

    def _refused(self, reason: str) -> PushUnauthenticated:
        self.metrics.gmail_pushes.labels("refused").inc()
        self.metrics.gmail_push_refusals.labels(reason).inc()
        log.info("Gmail push refused: %s", reason)
        return PushUnauthenticated()

    async def receive(self, authorization: str | None, body: bytes) -> Outcome:
        try:
            await self.tokens.verify(authorization)
        except PushTokenInvalid as error:
            raise self._refused(error.reason) from None
        try:
            notification = parse_push(body)
        except InvalidPush:
            self.metrics.gmail_pushes.labels("malformed").inc()
            raise
        token = (authorization or "").partition(" ")[2].strip()
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        now = utcnow()
        async with self.database.transaction() as session:
            first_token = await PushReceiptRepository(session).record(
                notification.message_id, token_hash, now
            )
            if first_token == token_hash:
                raise self._refused("replayed")
            outcome: Outcome
            if first_token is not None:
                outcome = "duplicate"
            else:
                # Only a verified address names a mailbox's account; should two accounts
                # hold it (an address that moved), each is told and checks its own history.
                holders = await AccountRepository(session).with_verified_email(
                    PROVIDER, notification.email
                )
                outcome = "unknown_address"
                for account in holders:
                    told = await self.notices.pushed(session, account, notification.history_id, now)
                    outcome = told if outcome in ("unknown_address", "coalesced") else outcome
        if outcome == "accepted":
            self.notices.window_opened()
        self.metrics.gmail_pushes.labels("accepted" if outcome == "coalesced" else outcome).inc()
        return outcome
