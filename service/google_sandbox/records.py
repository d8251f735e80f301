"""The sandbox provider's records: clients, users, grants, codes, tokens, service accounts,
RISC streams, fault rules and recorded calls."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from google_sandbox.history import MailboxHistory
from google_sandbox.mailbox import Message, generate_mailbox


@dataclass
class SandboxClient:
    client_id: str
    client_secret: str
    redirect_uris: set[str]
    # ID tokens for this client also name these audiences (a hybrid app's other clients),
    # with `azp` saying who asked (default: this client).
    extra_audiences: list[str] = field(default_factory=list)
    azp: str | None = None
    # The OAuth app's publishing status: in testing, grants beyond the sign-in scopes end
    # 7 days after consent (Google's OAuth 2.0 guide, "Refresh token expiration").
    publishing_status: str = "production"
    # Time-based access: grants end this long after consent; token answers then carry
    # `refresh_token_expires_in` (Google's web-server guide, the token response).
    time_based_access_seconds: int | None = None


@dataclass
class SandboxUser:
    """A Google account: `email` is how it signs in at the consent page (unique, lower case).

    `email_claim` is the address its ID token and userinfo report (default: `email`),
    which need not be verified (`email_verified`) and need not be unique: an address
    can move from one Google account to another, and other providers let people type
    any address they like.
    """

    email: str
    sub: str
    name: str
    mailbox_size: int
    email_claim: str | None = None
    email_verified: bool = True
    # Google disabled the account (Cross-Account Protection's account-disabled): refreshes
    # and access tokens are refused until it is enabled again.
    disabled: bool = False
    # A session-control policy wants a fresh sign-in: refreshes answer invalid_grant with
    # error_subtype invalid_rapt; the grant itself stands.
    reauth_required: bool = False
    # A Workspace admin restricted the service: refreshes answer admin_policy_enforced.
    admin_restricted: bool = False
    _mailbox: list[Message] | None = None
    _index: dict[str, Message] | None = None
    deleted: set[str] = field(default_factory=set)
    _seeded: list[Message] | None = None
    _history: MailboxHistory | None = None
    _built_for: tuple[int, int] = (-1, -1)  # (mailbox size, history version) of _mailbox

    @property
    def history(self) -> MailboxHistory:
        """The mailbox's changes and history records (history.py), made on first use."""
        if self._history is None:
            self._history = MailboxHistory(self.email)
        return self._history

    @property
    def mailbox_version(self) -> int:
        return self._history.version if self._history is not None else 0

    @property
    def claimed_email(self) -> str:
        return self.email_claim or self.email

    @property
    def mailbox(self) -> list[Message]:
        built_for = (self.mailbox_size, self.mailbox_version)
        if self._mailbox is None or self._built_for != built_for:
            if self._seeded is None or len(self._seeded) != self.mailbox_size:
                self._seeded = generate_mailbox(self.email, self.mailbox_size)
            seeded = self._seeded
            self._mailbox = seeded if self._history is None else self._history.apply(seeded)
            self._index = None
            self._built_for = built_for
        return self._mailbox

    @property
    def message_index(self) -> dict[str, Message]:
        mailbox = self.mailbox
        if self._index is None:
            self._index = {message.id: message for message in mailbox}
        return self._index


@dataclass
class Grant:
    id: str
    email: str
    client_id: str
    scopes: set[str]
    refresh_tokens: set[str] = field(default_factory=set)
    rotated_refresh_tokens: set[str] = field(default_factory=set)
    revoked: bool = False
    access_tokens: set[str] = field(default_factory=set)
    consented_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    expires_at: float | None = None  # testing status or time-based access; None: no end
    latest_refresh_token: str | None = None


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    email: str
    scopes: set[str]
    code_challenge: str | None
    code_challenge_method: str | None
    issue_refresh_token: bool
    expires_at: float
    nonce: str | None = None
    used: bool = False
    requested: set[str] = field(default_factory=set)  # the scopes the request asked for


@dataclass
class AccessToken:
    grant_id: str
    scopes: set[str]
    expires_at: float


@dataclass
class ServiceAccount:
    """A service account of the sandbox's project, for the RISC API (its key's public half)."""

    client_email: str
    private_key_id: str
    public_jwk: dict[str, Any]


@dataclass
class RiscStream:
    """The project's Cross-Account Protection stream (risc.py): where events go, which."""

    service_accounts: dict[str, ServiceAccount] = field(default_factory=dict)  # by key id
    receiver_url: str | None = None
    events_requested: list[str] = field(default_factory=list)
    enabled: bool = True
    # (jti, event type URI, HTTP status or error), newest last.
    deliveries: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=1000))


FaultKind = Literal["status", "drop", "hang", "latency", "raw", "revoke"]


@dataclass
class FaultRule:
    """Hits calls of `endpoint` ("*": all): skips `after` calls, then hits `times` (None: all).

    kind: status (an error response as the endpoint sends it), drop (connection closed
    mid-response), hang or latency (wait `delay`), raw (`reason` as the body, verbatim),
    revoke (revoke the grants of the user whose email is `reason`, then answer normally).
    """

    endpoint: str
    kind: FaultKind = "status"
    status: int = 503
    reason: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    after: int = 0
    times: int | None = None
    content_type: str = "text/html"
    seen: int = 0
    hits: int = 0

    def observe(self, endpoint: str) -> bool:
        """Count a call to `endpoint`; True if this rule is due to hit it."""
        if self.endpoint not in ("*", endpoint):
            return False
        self.seen += 1
        return self.seen > self.after and (self.times is None or self.hits < self.times)


@dataclass(frozen=True)
class Call:
    endpoint: str
    at: float
    status: int
