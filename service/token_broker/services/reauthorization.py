"""Links that send a user back to consent, for the problems that need one.

`reauthorization_required`, `no_refresh_token`, `scope_not_granted` and
`code_exchange_failed` each carry an `authorization_url`. One link per login hint
is reused for a while, so a caller that retries does not fill the state table.
"""

from __future__ import annotations

import time

from token_broker.services.authorizations import AuthorizationService

MAX_CACHED_LINKS = 10_000


class ReauthorizationLinks:
    def __init__(self, authorizations: AuthorizationService, *, lifetime_seconds: float) -> None:
        self.authorizations = authorizations
        self.lifetime_seconds = lifetime_seconds
        self._links: dict[str, tuple[float, str]] = {}

    async def url(self, login_hint: str | None) -> str:
        """An authorization URL that forces consent, preselecting `login_hint`."""
        key = login_hint or ""
        now = time.monotonic()
        cached = self._links.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        started = await self.authorizations.start(
            client_id=None, login_hint=login_hint, scopes=None, return_to=None
        )
        if len(self._links) > MAX_CACHED_LINKS:
            self._links.clear()
        self._links[key] = (now + self.lifetime_seconds, started.authorization_url)
        return started.authorization_url

    def forget(self, login_hint: str | None) -> None:
        """The account reconnected: its old link is spent."""
        self._links.pop(login_hint or "", None)
