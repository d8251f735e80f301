"""Decrypted access tokens in process memory: the hot path's only source."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr


@dataclass(frozen=True, slots=True)
class CachedToken:
    account_id: str
    subject: str
    email: str | None
    access_token: SecretStr
    expires_at: float
    minted_at: float
    scopes: tuple[str, ...]

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    @property
    def expires_at_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)


class TokenCache:
    """Decrypted access tokens by account, bounded (least recently used goes first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_account: OrderedDict[str, CachedToken] = OrderedDict()
        self._account_of: dict[str, str] = {}

    def get(self, reference: str) -> CachedToken | None:
        account_id = self._account_of.get(reference) or self._account_of.get(reference.lower())
        if account_id is None:
            return None
        entry = self._by_account.get(account_id)
        if entry is not None:
            self._by_account.move_to_end(account_id)
        return entry

    def put(self, entry: CachedToken) -> None:
        self._by_account[entry.account_id] = entry
        self._by_account.move_to_end(entry.account_id)
        self._account_of[entry.subject] = entry.account_id
        if entry.email:
            self._account_of[entry.email.lower()] = entry.account_id
        while len(self._by_account) > self.capacity:
            _, evicted = self._by_account.popitem(last=False)
            self._unindex(evicted)

    def drop(self, account_id: str | None) -> None:
        if account_id is None:
            self._by_account.clear()
            self._account_of.clear()
            return
        entry = self._by_account.pop(account_id, None)
        if entry is not None:
            self._unindex(entry)

    def _unindex(self, entry: CachedToken) -> None:
        for key in (entry.subject, (entry.email or "").lower()):
            if self._account_of.get(key) == entry.account_id:
                del self._account_of[key]

    def __len__(self) -> int:
        return len(self._by_account)
