"""Access tokens: cached in process, refreshed once per expiry fleet-wide.

Lookup order for `GET /v1/accounts/{account}/access-token`:

1. the in-process cache (no database, no upstream): a token with at least `min_ttl`
   seconds left is returned as is;
2. otherwise one refresh per account per process (single flight): callers that
   arrive while it runs await its result;
3. across replicas, the refresh runs under the account's lease (`refresh_leases.py`):
   taken in a short transaction that first reads the row again, so a token another
   replica stored meanwhile is used instead of refreshing; the provider is called
   with no transaction open and no connection held; the new access token (and a
   rotated refresh token) is stored, and the lease cleared, in a second short one.

A token minted after a caller's request started is always good enough for that
caller, even if the provider's tokens live shorter than `min_ttl`: no refresh loops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlmodel.ext.asyncio.session import AsyncSession

from token_broker.errors import (
    AccountNotFound,
    BrokerError,
    ProviderRejectedClient,
    ReauthorizationRequired,
    UpstreamUnavailable,
)
from token_broker.google.failures import problem_for
from token_broker.google.oauth import OAuthClient, OAuthError, TokenGrant
from token_broker.google.transport import UpstreamProtocolError
from token_broker.kit.retry import Backoff, RetriesExhausted, TransientError, retrying
from token_broker.kit.single_flight import SingleFlight
from token_broker.observability.metrics import Metrics
from token_broker.services.account_states import PROVIDER, AccountStates
from token_broker.services.audit import Action, AuditBuffer
from token_broker.services.forced_refresh import ForcedRefreshes
from token_broker.services.grant_health import (
    RefusedRefresh,
    Unusable,
    Verdict,
    is_recorded,
    unusable_problem,
)
from token_broker.services.reauthorization import ReauthorizationLinks
from token_broker.services.refresh_leases import Lease, RefreshLeases
from token_broker.services.scope_upgrades import ScopeUpgrades
from token_broker.services.token_cache import CachedToken, TokenCache
from token_broker.services.webhooks import Webhooks
from token_broker.settings import Settings
from token_broker.store.change_feed import ChangeFeed
from token_broker.store.database import Database
from token_broker.store.models import Account, AccountStatus
from token_broker.store.repositories import AccountRepository

log = logging.getLogger("token_broker.tokens")


class Source(StrEnum):
    """Where a caller's token came from (metrics and audit)."""

    CACHE = "cache_hit"
    DATABASE = "database"
    REFRESHED = "refreshed"
    WAITED = "waited"
    REFRESHED_ELSEWHERE = "refreshed_elsewhere"
    FORCE_THROTTLED = "force_throttled"


@dataclass(frozen=True)
class IssuedToken:
    token: CachedToken
    source: Source


@dataclass(frozen=True)
class _DeadGrant:
    """No token for this account now: a dead grant, a suspension or a session policy."""

    email: str | None
    unusable: Unusable

    @classmethod
    def of(cls, account: Account, verdict: Verdict | None = None) -> _DeadGrant:
        if verdict is not None:
            status = account.status if verdict.ends_grant else "active"
            return cls(account.email, Unusable(status, verdict.reason, verdict.detail))
        return cls(account.email, Unusable(account.status, account.status_reason,
                                           account.status_detail))  # fmt: skip


@dataclass(frozen=True)
class RefreshRequest:
    """One refresh: a token minted at or after `started` always satisfies it."""

    account_id: str
    started: float
    min_ttl: int
    force_refresh: bool
    trigger: str = "request"

    @property
    def caller_forced(self) -> bool:
        """A caller's force_refresh (the keep-alive forces too, but throttles nothing)."""
        return self.force_refresh and self.trigger == "request"


Outcome = tuple[CachedToken, Source] | _DeadGrant


class TokenService:
    def __init__(
        self,
        *,
        database: Database,
        account_states: AccountStates,
        oauth: OAuthClient,
        links: ReauthorizationLinks,
        settings: Settings,
        audit: AuditBuffer,
        changes: ChangeFeed,
        metrics: Metrics,
        webhooks: Webhooks,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.database = database
        self.account_states = account_states
        self.oauth = oauth
        self.links = links
        self.settings = settings
        self.audit = audit
        self.metrics = metrics
        self.webhooks = webhooks
        self.clock = clock
        self.sleep = sleep
        self.cache = TokenCache(settings.token_cache_size)
        self.forced = ForcedRefreshes(settings.forced_refresh_interval_seconds)
        self.backoff = Backoff(
            attempts=settings.refresh_attempts,
            budget=settings.refresh_budget_seconds,
            initial=0.5,
            maximum=4.0,
            jitter=0.25,
        )
        self._flights: SingleFlight[str, tuple[CachedToken, Source]] = SingleFlight("refresh")
        self._loads: SingleFlight[str, tuple[str, CachedToken | None]] = SingleFlight(
            "account-load"
        )
        # Cold loads of many accounts at once (a storm after a restart) queue here, using
        # at most the pool's steady connections, instead of timing out in the pool's queue.
        self._loading = asyncio.Semaphore(settings.db_pool_size)
        self._cooldown_until: dict[str, float] = {}
        self._scope_sets: dict[str, tuple[str, ...]] = {}
        self._revoked: dict[str, _DeadGrant] = {}  # not active: why, and the email for links
        self.scope_upgrades = ScopeUpgrades(links, settings.scopes)
        self.leases = RefreshLeases(
            database,
            changes,
            lease_seconds=settings.refresh_lease_seconds,
            cooldown_seconds=settings.refresh_cooldown_seconds,
            concurrency=settings.refresh_concurrency,
        )
        changes.subscribe(self._on_change)

    # ------------------------------------------------------------------ public

    async def access_token(
        self,
        reference: str,
        *,
        min_ttl: int,
        force_refresh: bool,
        client_id: str | None,
        scopes: Sequence[str] = (),
    ) -> IssuedToken:
        """A token for the account; with `scopes`, 403 `scope_not_granted` (and an upgrade
        link) unless the grant holds every one of them."""
        if not force_refresh:
            hit = self.from_cache(reference, min_ttl=min_ttl, client_id=client_id, scopes=scopes)
            if hit is not None:
                return hit
        started = self.clock()
        if force_refresh:
            recent = self.forced.recent(self.cache.get(reference), started)
            if recent is not None:
                issued = IssuedToken(recent, Source.FORCE_THROTTLED)
                self._issued(issued, client_id)
                return issued
        try:
            issued = await self._slow_path(
                reference, self.cache.get(reference), started, min_ttl, force_refresh
            )
        except ReauthorizationRequired as error:
            self.metrics.token_requests.labels("reauthorization_required").inc()
            raise self.links.for_caller(error, client_id) from None
        except UpstreamUnavailable:
            self.metrics.token_requests.labels("unavailable").inc()
            raise
        if force_refresh and self.forced.throttled(issued.token, started):
            issued = IssuedToken(issued.token, Source.FORCE_THROTTLED)
        self.scope_upgrades.require(issued.token, scopes, client_id)
        self._issued(issued, client_id)
        return issued

    def from_cache(
        self,
        reference: str,
        *,
        min_ttl: int,
        client_id: str | None,
        scopes: Sequence[str] = (),
    ) -> IssuedToken | None:
        """The cached token if it has `min_ttl` seconds left: no query, no upstream call."""
        cached = self.cache.get(reference)
        if cached is None or cached.remaining(self.clock()) < min_ttl:
            return None
        self.scope_upgrades.require(cached, scopes, client_id)
        issued = IssuedToken(cached, Source.CACHE)
        self._issued(issued, client_id)
        return issued

    def _issued(self, issued: IssuedToken, client_id: str | None) -> None:
        self.metrics.count_token_request(issued.source.value)
        # The busiest audit event: counted per client, account and source each second.
        # The refresh behind a "refreshed" token has its own row, with its request id.
        self.audit.count(
            Action.TOKEN_ISSUED,
            client_id=client_id,
            account_id=issued.token.account_id,
            source=issued.source.value,
        )

    async def keep_alive(self, account_id: str, unused_since: float) -> Source:
        """Refresh an account unless its refresh token was used after `unused_since`."""
        request = RefreshRequest(account_id, unused_since, 0, True, trigger="keepalive")
        flight, _ = self._shared_refresh(request)
        _, source = await flight
        return source

    def forget(self, account_id: str | None) -> None:
        self.cache.drop(account_id)
        if account_id is None:
            self._revoked.clear()
            self._cooldown_until.clear()
        else:
            self._revoked.pop(account_id, None)
            self._cooldown_until.pop(account_id, None)

    def _on_change(self, kind: str, identifier: str | None) -> None:
        if kind == "account":
            self.forget(identifier)

    # ------------------------------------------------------------------ slow path

    async def _slow_path(
        self,
        reference: str,
        cached: CachedToken | None,
        started: float,
        min_ttl: int,
        force_refresh: bool,
    ) -> IssuedToken:
        if cached is not None:
            account_id = cached.account_id
        else:
            account_id, stored = await self._load(reference)
            if stored is not None and self._good_enough(stored, started, min_ttl, force_refresh):
                return IssuedToken(stored, Source.DATABASE)
        if account_id in self._revoked:
            raise self._reauthorization(account_id, self._revoked[account_id])
        flight, joined = self._shared_refresh(
            RefreshRequest(account_id, started, min_ttl, force_refresh)
        )
        token, source = await flight
        return IssuedToken(token, Source.WAITED if joined else source)

    def _shared_refresh(
        self, request: RefreshRequest
    ) -> tuple[Awaitable[tuple[CachedToken, Source]], bool]:
        """The account's refresh in flight, joined, or a new one; and whether it was joined."""
        account_id = request.account_id
        if not self._flights.running(account_id):
            remaining = self._cooldown_until.get(account_id, 0) - time.monotonic()
            if remaining > 0:
                raise UpstreamUnavailable(
                    "A refresh for this account failed moments ago; retry shortly.",
                    retry_after=max(1, math.ceil(remaining)),
                )
        # The refresh runs on its own: a caller that disconnects does not cancel it (nor
        # the transaction it holds) for everyone else waiting on it.
        return self._flights.join(account_id, lambda: self._refresh(request))

    def _good_enough(
        self, token: CachedToken, started: float, min_ttl: int, force_refresh: bool
    ) -> bool:
        if token.minted_at >= started:
            return True  # minted after this request began: the best there is
        if force_refresh:
            return self.forced.satisfies(token, started)
        return token.remaining(self.clock()) >= min_ttl

    async def _load(self, reference: str) -> tuple[str, CachedToken | None]:
        """The account's id and stored token, read (and decrypted, and cached) once for
        every caller asking at the same time: a cold cache under load costs one query."""
        return await self._loads.run(reference, lambda: self._read_account(reference))

    async def _read_account(self, reference: str) -> tuple[str, CachedToken | None]:
        since = self.cache.generation
        async with self._loading, self.database.reading() as session:
            account = await AccountRepository(session).resolve(PROVIDER, reference)
        if account is None:
            raise AccountNotFound()
        if account.status != AccountStatus.ACTIVE:
            self._revoked[account.id] = _DeadGrant.of(account)
            return account.id, None
        stored = self._from_row(account)
        if stored is not None:
            self.cache.put(stored, resolved=reference, since=since)
        return account.id, stored

    def _from_row(self, account: Account) -> CachedToken | None:
        access_token = self.account_states.access_token(account)
        if access_token is None or account.access_token_expires_at is None:
            return None
        return CachedToken(
            account_id=account.id,
            subject=account.subject,
            email=account.email,
            access_token=access_token,
            expires_at=account.access_token_expires_at.timestamp(),
            minted_at=(account.last_refreshed_at or account.updated_at).timestamp(),
            scopes=self._scopes(account.scopes),
            forced_at=account.forced_refresh_at.timestamp() if account.forced_refresh_at else None,
        )

    def _scopes(self, stored: str) -> tuple[str, ...]:
        """One tuple per distinct set of scopes, shared by every cached token that has it
        (a third of a cached token's memory otherwise)."""
        scopes = self._scope_sets.get(stored)
        if scopes is None:
            scopes = self._scope_sets[stored] = tuple(stored.split())
        return scopes

    def _reauthorization(self, account_id: str, dead: _DeadGrant) -> BrokerError:
        link = self.links.url(account_id=account_id, login_hint=dead.email, client_id=None)
        return unusable_problem(dead.unusable, link)

    # ------------------------------------------------------------------ refresh

    async def _refresh(self, request: RefreshRequest) -> tuple[CachedToken, Source]:
        refreshes = self.metrics.refreshes
        try:
            outcome = await self.leases.single_flight(
                request.account_id,
                lambda account: self._already_done(account, request),
                lambda lease: self._refresh_holding(request, lease),
            )
        except RetriesExhausted as error:
            refreshes.labels("transient", request.trigger).inc()
            cooldown = self.settings.refresh_cooldown_seconds
            self._cooldown_until[request.account_id] = time.monotonic() + cooldown
            self.audit.record(
                Action.REFRESH, "unavailable", account_id=request.account_id,
                detail={"class": "transient", "attempts": error.attempts,
                        "trigger": request.trigger},
            )  # fmt: skip
            log.warning(
                "refresh failed after %d attempts (%s)",
                error.attempts, error.last.reason, extra={"account_id": request.account_id},
            )  # fmt: skip
            problem = problem_for(error, "refresh")
            problem.retry_after = max(error.retry_after, math.ceil(cooldown))
            raise problem from None
        except UpstreamUnavailable as error:
            # Another replica's refresh failed moments ago: fail fast here too until then.
            self._cooldown_until[request.account_id] = time.monotonic() + (error.retry_after or 1)
            raise
        except ProviderRejectedClient:
            refreshes.labels("rejected_client", request.trigger).inc()
            raise
        except ReauthorizationRequired:
            refreshes.labels("session_policy", request.trigger).inc()
            raise
        if isinstance(outcome, _DeadGrant):
            self.webhooks.wake()
            if outcome.unusable.status == AccountStatus.ACTIVE:
                # A session policy: the grant stands, the user must sign in again.
                refreshes.labels("session_policy", request.trigger).inc()
            else:
                refreshes.labels("permanent", request.trigger).inc()
                self.cache.drop(request.account_id)
                self._revoked[request.account_id] = outcome
            raise self._reauthorization(request.account_id, outcome)
        if outcome[1] is Source.REFRESHED:
            refreshes.labels("ok", request.trigger).inc()
        self.cache.put(outcome[0])
        return outcome

    async def _refresh_holding(self, request: RefreshRequest, lease: Lease) -> Outcome:
        """Call the provider holding the lease (and nothing else), then store the result."""
        try:
            async with asyncio.timeout(lease.call_budget()):
                result = await self._call_token_endpoint(lease.account)
        except TimeoutError:
            last = TransientError("the refresh would outlast its lease", kind="timeout")
            raise RetriesExhausted(last, attempts=1, retry_after=1) from None
        async with self.database.transaction() as session:
            account = await self.leases.settle(session, request.account_id, lease)
            if account is None:
                raise UpstreamUnavailable(
                    "This account's refresh took too long and was taken over; retry.",
                    retry_after=1,
                )
            return await self._record(
                session, account, result, request.trigger, forced=request.caller_forced
            )

    def _already_done(self, account: Account, request: RefreshRequest) -> Outcome | None:
        if account.status != AccountStatus.ACTIVE:
            return _DeadGrant.of(account)
        stored = self._from_row(account)
        if stored is not None and self._good_enough(
            stored, request.started, request.min_ttl, request.force_refresh
        ):
            return stored, Source.REFRESHED_ELSEWHERE
        return None

    async def _call_token_endpoint(self, account: Account) -> TokenGrant | OAuthError:
        refresh_token = self.account_states.refresh_token(account)
        if refresh_token is None:
            return OAuthError("invalid_grant", status=400)

        async def attempt() -> TokenGrant:
            try:
                return await self.oauth.refresh(refresh_token)
            except UpstreamProtocolError as error:
                # A garbled answer may be a passing proxy fault: retry within budget.
                raise TransientError(str(error), kind="malformed") from None

        try:
            return await retrying(attempt, self.backoff, sleep=self.sleep)
        except OAuthError as error:
            if is_recorded(RefusedRefresh(error.error, error.subtype)):
                return error  # recorded with its reason (services/grant_health.py)
            problem = problem_for(error, "refresh")
            if isinstance(problem, ReauthorizationRequired):
                problem.authorization_url = self.links.url(
                    account_id=account.id, login_hint=account.email, client_id=None
                )
            raise problem from None

    async def _record(
        self,
        session: AsyncSession,
        account: Account,
        result: TokenGrant | OAuthError,
        trigger: str,
        *,
        forced: bool,
    ) -> Outcome:
        if isinstance(result, OAuthError):
            verdict = await self.account_states.refused(
                session, account, RefusedRefresh(result.error, result.subtype), trigger=trigger
            )
            return _DeadGrant.of(account, verdict)
        await self.account_states.record_refresh(
            session, account, result, trigger=trigger, forced=forced
        )
        token = CachedToken(
            account_id=account.id,
            subject=account.subject,
            email=account.email,
            access_token=result.access_token,
            expires_at=result.expires_at.timestamp(),
            minted_at=result.received_at.timestamp(),
            scopes=self._scopes(account.scopes),
            forced_at=account.forced_refresh_at.timestamp() if account.forced_refresh_at else None,
        )
        return token, Source.REFRESHED
