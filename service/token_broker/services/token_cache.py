"""Decrypted access tokens in process memory: the hot path's only source."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr

from token_broker.store.models import normalize_email


@dataclass(frozen=True, slots=True)
class CachedToken:
    account_id: str
    subject: str
    email: str | None
    access_token: SecretStr
    expires_at: float
    minted_at: float
    scopes: tuple[str, ...]
    # When a caller's force_refresh last made a refresh for the account (None: never).
    forced_at: float | None = None

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    @property
    def expires_at_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)


class TokenCache:
    """Decrypted access tokens by account, bounded (least recently used goes first).

    Found by subject, or by an email address only as the database resolved it: an
    alias is added by the lookup that resolved that address (verified, one account),
    never from the account's own email. Any drop invalidates aliases being added by
    lookups that started before it, so a lookup racing a connect that made the address
    ambiguous cannot leave a stale alias behind.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_account: OrderedDict[str, CachedToken] = OrderedDict()
        self._by_subject: dict[str, str] = {}
        self._by_email: dict[str, str] = {}
        self._emails_of: dict[str, set[str]] = {}  # account id -> its aliases
        self.generation = 0  # counts drops; see `put`

    def get(self, reference: str) -> CachedToken | None:
        account_id = self._by_subject.get(reference)
        if account_id is None and "@" in reference:
            account_id = self._by_email.get(normalize_email(reference))
        if account_id is None:
            return None
        entry = self._by_account.get(account_id)
        if entry is not None:
            self._by_account.move_to_end(account_id)
        return entry

    def put(
        self, entry: CachedToken, *, resolved: str | None = None, since: int | None = None
    ) -> None:
        """Cache `entry`; `resolved` is the reference a lookup started at `since` resolved."""
        self._by_account[entry.account_id] = entry
        self._by_account.move_to_end(entry.account_id)
        self._by_subject[entry.subject] = entry.account_id
        if resolved is not None and resolved != entry.subject and since == self.generation:
            email = normalize_email(resolved)
            self._by_email[email] = entry.account_id
            self._emails_of.setdefault(entry.account_id, set()).add(email)
        while len(self._by_account) > self.capacity:
            _, evicted = self._by_account.popitem(last=False)
            self._unindex(evicted)

    def drop(self, account_id: str | None) -> None:
        self.generation += 1
        if account_id is None:
            self._by_account.clear()
            self._by_subject.clear()
            self._by_email.clear()
            self._emails_of.clear()
            return
        entry = self._by_account.pop(account_id, None)
        if entry is not None:
            self._unindex(entry)

    def _unindex(self, entry: CachedToken) -> None:
        if self._by_subject.get(entry.subject) == entry.account_id:
            del self._by_subject[entry.subject]
        for email in self._emails_of.pop(entry.account_id, ()):
            if self._by_email.get(email) == entry.account_id:
                del self._by_email[email]

    def __len__(self) -> int:
        return len(self._by_account)
