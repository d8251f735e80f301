"""Access-token answers, serialised once per token: only `expires_in` changes between two.

Bounded by least-recently-used eviction, so an account in steady use keeps its entry
however many others come and go.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

from token_broker.kit.clock import rfc3339
from token_broker.services.token_cache import CachedToken

DEFAULT_CAPACITY = 16_384


class TokenBodies:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._parts: OrderedDict[tuple[str, float], tuple[bytes, bytes]] = OrderedDict()

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

    @staticmethod
    def _serialise(token: CachedToken) -> tuple[bytes, bytes]:
        head = json.dumps(
            {
                "access_token": token.access_token.get_secret_value(),
                "token_type": "Bearer",
                "expires_at": rfc3339(token.expires_at_datetime),
            }
        )
        tail = json.dumps({"scopes": list(token.scopes)})
        return (head[:-1] + ', "expires_in": ').encode(), (", " + tail[1:]).encode()

    def __len__(self) -> int:
        return len(self._parts)
