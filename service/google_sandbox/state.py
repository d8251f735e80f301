"""The sandbox provider's memory: clients, users, codes, grants, tokens, faults and counters."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from google_sandbox.history import DEFAULT_RETENTION_SECONDS
from google_sandbox.keys import SigningKeys
from google_sandbox.mailbox import PageTokens, SearchCache
from google_sandbox.pubsub import PubSub
from google_sandbox.quota import GmailQuota
from google_sandbox.records import (
    AccessToken,
    AuthCode,
    Call,
    FaultRule,
    Grant,
    RiscStream,
    SandboxClient,
    SandboxUser,
)
from google_sandbox.scopes import granted_names

DEFAULT_MAILBOX_SIZE = 1200
GOOGLE_ISSUER = "https://accounts.google.com"


def _random(prefix: str, length: int = 48) -> str:
    return prefix + secrets.token_urlsafe(length)[:length]


class SandboxState:
    """Everything the sandbox knows. Tests in the same process may read and change it directly."""

    def __init__(
        self,
        *,
        issuer: str | None = None,
        access_token_lifetime: int = 3599,
        code_ttl: int = 300,
        default_mailbox_size: int = DEFAULT_MAILBOX_SIZE,
    ) -> None:
        self.issuer = issuer
        self.access_token_lifetime = access_token_lifetime
        self.code_ttl = code_ttl
        self.default_mailbox_size = default_mailbox_size
        self.rotate_refresh_tokens = False
        self.clients: dict[str, SandboxClient] = {}
        self.users: dict[str, SandboxUser] = {}
        self.codes: dict[str, AuthCode] = {}
        self.grants: dict[str, Grant] = {}
        # Lookups instead of loops over every grant, so a benchmark with 100,000
        # accounts measures the broker, not the sandbox.
        self._by_refresh_token: dict[str, Grant] = {}
        self._live_grants: dict[tuple[str, str], Grant] = {}
        self._grants_of: dict[str, list[Grant]] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        # Who signed in on the consent page, by session cookie (prompt=none reads it).
        self.sessions: dict[str, str] = {}
        self.faults: list[FaultRule] = []
        self.calls: Counter[str] = Counter()
        self.call_log: deque[Call] = deque(maxlen=100_000)
        self.signing_keys = SigningKeys()
        self.page_tokens = PageTokens(secrets.token_bytes(32))
        self.searches = SearchCache()
        self.quota = GmailQuota()
        self.pubsub = PubSub(self.signing_keys, lambda: self.issuer or GOOGLE_ISSUER)
        self.history_retention_seconds: float = DEFAULT_RETENTION_SECONDS
        # Called when clients, users or grants change (dev mode saves them to disk).
        self.on_change: Callable[[], None] | None = None
        # Called with (event type, user email, client id, event fields) when Google would
        # tell the client's project about a security event (risc.py delivers it).
        self.on_security_event: Callable[[str, str, str, dict[str, str]], None] | None = None
        self.risc = RiscStream()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ setup

    def add_client(
        self, client_id: str, client_secret: str, redirect_uris: list[str]
    ) -> SandboxClient:
        client = SandboxClient(client_id, client_secret, {*redirect_uris, "postmessage"})
        self.clients[client_id] = client
        self._changed()
        return client

    def add_user(
        self,
        email: str,
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        email_claim: str | None = None,
        email_verified: bool | None = None,
        notify: bool = True,
    ) -> SandboxUser:
        email = email.strip().lower()
        user = self.users.get(email)
        if user is None:
            # Google subjects are 21-digit numbers, stable per account.
            digest = int.from_bytes(hashlib.sha256(email.encode()).digest()[:8], "big")
            user = SandboxUser(
                email=email,
                sub=str(100_000_000_000_000_000_000 + digest % 899_999_999_999_999_999_999),
                name=name or email.split("@")[0].replace(".", " ").title(),
                mailbox_size=self.default_mailbox_size if mailbox_size is None else mailbox_size,
            )
            self.users[email] = user
        elif mailbox_size is not None:
            user.mailbox_size = mailbox_size
            self.searches.clear()
        if email_claim is not None:
            user.email_claim = email_claim
        if email_verified is not None:
            user.email_verified = email_verified
        if notify:
            self._changed()
        return user

    def reset(self) -> None:
        """Forget users, grants, tokens, faults and counters; keep clients and signing key."""
        self.access_token_lifetime = 3599
        self.rotate_refresh_tokens = False
        for collection in (
            self.users, self.codes, self.grants, self.access_tokens, self.sessions,
            self._by_refresh_token, self._live_grants, self._grants_of,
        ):  # fmt: skip
            collection.clear()
        self.faults.clear()
        self.calls.clear()
        self.call_log.clear()
        self.searches.clear()
        self.quota.reset()
        self.pubsub.reset()
        self.history_retention_seconds = DEFAULT_RETENTION_SECONDS
        self.risc.deliveries.clear()

    # ------------------------------------------------------------------ grants and tokens

    def live_grant(self, email: str, client_id: str) -> Grant | None:
        grant = self._live_grants.get((email, client_id))
        return grant if grant is not None and not grant.revoked else None

    def new_grant(self, email: str, client_id: str, scopes: set[str]) -> Grant:
        grant = Grant(id=_random("g", 16), email=email, client_id=client_id, scopes=scopes)
        self._add_grant(grant)
        self._changed()
        return grant

    def _add_grant(self, grant: Grant) -> None:
        self.grants[grant.id] = grant
        self._grants_of.setdefault(grant.email, []).append(grant)
        if not grant.revoked:
            self._live_grants[(grant.email, grant.client_id)] = grant
        for token in grant.refresh_tokens | grant.rotated_refresh_tokens:
            self._by_refresh_token[token] = grant

    def issue_code(self, code: AuthCode) -> str:
        value = _random("4/0A", 60)
        self.codes[value] = code
        return value

    def issue_access_token(self, grant: Grant, scopes: set[str] | None = None) -> tuple[str, int]:
        """An access token for the grant's scopes, or the narrower `scopes` a refresh asked for."""
        token = _random("ya29.sandbox-", 64)
        lifetime = self.access_token_lifetime
        now = time.time()
        # A grant's expired tokens go when it gets a new one: memory stays bounded
        # however many refreshes a benchmark makes.
        for old in [t for t in grant.access_tokens if self.access_tokens[t].expires_at <= now]:
            grant.access_tokens.discard(old)
            del self.access_tokens[old]
        granted = set(grant.scopes if scopes is None else scopes)
        self.access_tokens[token] = AccessToken(grant.id, granted, now + lifetime)
        grant.access_tokens.add(token)
        return token, lifetime

    def sign_in(self, email: str) -> str:
        """A session for `email`, as Google's sign-in cookie would carry."""
        session = secrets.token_urlsafe(24)
        self.sessions[session] = email
        return session

    def issue_refresh_token(self, grant: Grant) -> str:
        token = _random("1//sandbox-", 64)
        grant.refresh_tokens.add(token)
        self._by_refresh_token[token] = grant
        grant.latest_refresh_token = token
        self._changed()
        return token

    def rotate_refresh_token(self, grant: Grant, presented: str) -> str:
        """Retire `presented` (presenting it again kills the grant) and issue its successor."""
        grant.refresh_tokens.discard(presented)
        grant.rotated_refresh_tokens.add(presented)
        return self.issue_refresh_token(grant)  # saves the rotation too

    def grant_for_refresh_token(self, token: str) -> tuple[Grant | None, bool]:
        """(grant, replayed): replayed means a rotated-away token was presented again."""
        grant = self._by_refresh_token.get(token)
        if grant is None:
            return None, False
        return grant, token in grant.rotated_refresh_tokens

    def seed(
        self, emails: list[str], client_id: str, scopes: set[str]
    ) -> list[tuple[SandboxUser, str, str, int]]:
        """Users with a live grant each, at once (benchmarks): (user, refresh token,
        access token, its lifetime) per email."""
        seeded = []
        for email in emails:
            user = self.add_user(email, notify=False)
            grant = self.live_grant(user.email, client_id)
            if grant is None:
                grant = Grant(
                    id=_random("g", 16),
                    email=user.email,
                    client_id=client_id,
                    scopes=granted_names(scopes),
                )
                self._add_grant(grant)
            refresh_token = _random("1//sandbox-", 64)
            grant.refresh_tokens.add(refresh_token)
            grant.latest_refresh_token = refresh_token
            self._by_refresh_token[refresh_token] = grant
            access_token, lifetime = self.issue_access_token(grant)
            seeded.append((user, refresh_token, access_token, lifetime))
        self._changed()
        return seeded

    def valid_access_token(self, token: str) -> AccessToken | None:
        access = self.access_tokens.get(token)
        if access is None or access.expires_at <= time.time():
            return None
        grant = self.grants.get(access.grant_id)
        if grant is None or grant.revoked:
            return None
        user = self.users.get(grant.email)
        if user is not None and user.disabled:
            return None
        return access

    def revoke_grant(self, grant: Grant) -> None:
        grant.revoked = True
        if self._live_grants.get((grant.email, grant.client_id)) is grant:
            del self._live_grants[(grant.email, grant.client_id)]
        self._changed()
        for token in grant.access_tokens:
            self.access_tokens.pop(token, None)
        grant.access_tokens.clear()

    def revoke_user(self, email: str) -> int:
        """Revoke every live grant of the user (Google Account > Remove access): each
        client's project is told tokens-revoked."""
        revoked = 0
        clients = set()
        for grant in self._grants_of.get(email.lower(), []):
            if not grant.revoked:
                self.revoke_grant(grant)
                clients.add(grant.client_id)
                revoked += 1
        for client_id in sorted(clients):
            self._security_event("tokens-revoked", email.lower(), client_id)
        return revoked

    def set_disabled(self, email: str, disabled: bool, *, reason: str | None = None) -> int:
        """Disable (with Google's `reason`: hijacking, bulk-account) or enable a Google
        account; returns how many clients' projects were told."""
        user = self.users[email.lower()]
        user.disabled = disabled
        self._changed()
        clients = sorted({g.client_id for g in self.grants.values() if g.email == user.email})
        for client_id in clients:
            event = "account-disabled" if disabled else "account-enabled"
            self._security_event(event, user.email, client_id, {"reason": reason} if reason else {})
        return len(clients)

    def age_grants(self, email: str, seconds: float) -> int:
        """Let `seconds` pass for the user's grants (consent, last use and end move back)."""
        aged = 0
        for grant in self.grants.values():
            if grant.email == email.lower():
                grant.consented_at -= seconds
                grant.last_used_at -= seconds
                if grant.expires_at is not None:
                    grant.expires_at -= seconds
                aged += 1
        self._changed()
        return aged

    def _security_event(
        self, event: str, email: str, client_id: str, extra: dict[str, str] | None = None
    ) -> None:
        if self.on_security_event is not None:
            self.on_security_event(event, email, client_id, extra or {})

    def expire_access_tokens(self, email: str | None = None) -> int:
        if email is None:
            grants: list[Grant] = list(self.grants.values())
        else:
            grants = self._grants_of.get(email.lower(), [])
        expired = 0
        for grant in grants:
            for token in grant.access_tokens:
                self.access_tokens[token].expires_at = 0
                expired += 1
        return expired

    # ------------------------------------------------------------------ faults and counters

    def fault_for(self, endpoint: str) -> FaultRule | None:
        """The first rule due for this call; every rule for the endpoint counts the call."""
        chosen = None
        for rule in self.faults:
            if rule.observe(endpoint) and chosen is None:
                chosen = rule
                rule.hits += 1
        return chosen

    def record(self, endpoint: str, status: int) -> None:
        self.calls[endpoint] += 1
        self.call_log.append(Call(endpoint, time.monotonic(), status))

    def calls_to(self, endpoint: str) -> list[Call]:
        return [call for call in self.call_log if call.endpoint == endpoint]

    # ------------------------------------------------------------------ persistence (dev mode)

    def snapshot(self) -> dict[str, object]:
        """Clients, users and grants, so a restarted dev broker's refresh tokens still work."""
        return {
            "clients": [
                {"client_id": c.client_id, "client_secret": c.client_secret,
                 "redirect_uris": sorted(c.redirect_uris - {"postmessage"}),
                 "extra_audiences": c.extra_audiences, "azp": c.azp,
                 "publishing_status": c.publishing_status,
                 "time_based_access_seconds": c.time_based_access_seconds}
                for c in self.clients.values()
            ],
            "users": [
                {"email": u.email, "name": u.name, "mailbox_size": u.mailbox_size,
                 "email_claim": u.email_claim, "email_verified": u.email_verified,
                 "disabled": u.disabled}
                for u in self.users.values()
            ],
            "grants": [
                {"id": g.id, "email": g.email, "client_id": g.client_id,
                 "scopes": sorted(g.scopes), "refresh_tokens": sorted(g.refresh_tokens),
                 "rotated_refresh_tokens": sorted(g.rotated_refresh_tokens),
                 "revoked": g.revoked, "consented_at": g.consented_at,
                 "last_used_at": g.last_used_at, "expires_at": g.expires_at}
                for g in self.grants.values()
            ],
        }  # fmt: skip

    def restore(self, snapshot: dict[str, Any]) -> None:
        for client in snapshot.get("clients", []):
            added = self.add_client(
                client["client_id"], client["client_secret"], client["redirect_uris"]
            )
            added.extra_audiences = list(client.get("extra_audiences", []))
            added.azp = client.get("azp")
            added.publishing_status = client.get("publishing_status", "production")
            added.time_based_access_seconds = client.get("time_based_access_seconds")
        for user in snapshot.get("users", []):
            self.add_user(
                user["email"],
                name=user["name"],
                mailbox_size=user["mailbox_size"],
                email_claim=user.get("email_claim"),
                email_verified=user.get("email_verified"),
            ).disabled = bool(user.get("disabled", False))
        for grant in snapshot.get("grants", []):
            self._add_grant(
                Grant(
                    id=grant["id"],
                    email=grant["email"],
                    client_id=grant["client_id"],
                    # Grants saved before the sandbox spoke Google's scope names.
                    scopes=granted_names(grant["scopes"]),
                    refresh_tokens=set(grant["refresh_tokens"]),
                    rotated_refresh_tokens=set(grant["rotated_refresh_tokens"]),
                    revoked=grant["revoked"],
                    # Grants saved before the sandbox kept these: consented when restored.
                    consented_at=grant.get("consented_at", time.time()),
                    last_used_at=grant.get("last_used_at", time.time()),
                    expires_at=grant.get("expires_at"),
                )
            )
