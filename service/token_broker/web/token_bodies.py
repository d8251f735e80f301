"""Access-token answers, serialised once per token: only `expires_in` changes between two.

Bounded by least-recently-used eviction (as many entries as the token cache holds,
TOKEN_BROKER_TOKEN_CACHE_SIZE), so an account in steady use keeps its entry however
many others come and go. The part after `expires_in` (the scopes) is shared by every
answer with the same scopes.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

from token_broker.kit.clock import rfc3339
from token_broker.services.token_cache import CachedToken


class TokenBodies:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._parts: OrderedDict[tuple[str, float], tuple[bytes, bytes]] = OrderedDict()
        self._tails: dict[tuple[str, ...], bytes] = {}

    def body(self, token: CachedToken, now: float) -> bytes:
        key = (token.account_id, token.expires_at)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._parts[key] = self._serialise(token)
            if len(self._parts) > self.capacity:
                self._parts.popitem(last=False)
        else:
            self._parts.move_to_end(key)
        return parts[0] + str(max(0, math.floor(token.remaining(now)))).encode() + parts[1]

    def _serialise(self, token: CachedToken) -> tuple[bytes, bytes]:
        head = json.dumps(
            {
                "access_token": token.access_token.get_secret_value(),
                "token_type": "Bearer",
                "expires_at": rfc3339(token.expires_at_datetime),
            }
        )
        tail = self._tails.get(token.scopes)
        if tail is None:
            scopes = json.dumps({"scopes": list(token.scopes)})
            tail = self._tails[token.scopes] = (", " + scopes[1:]).encode()
        return (head[:-1] + ', "expires_in": ').encode(), tail

    def __len__(self) -> int:
        return len(self._parts)
