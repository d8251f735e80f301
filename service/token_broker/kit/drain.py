"""Graceful shutdown: on SIGTERM or SIGINT the broker starts draining at once.

uvicorn stops accepting connections and waits (up to the grace period) for
requests in flight; meanwhile `/readyz` answers 503 and NDJSON listings end after
the page they are on, with a failure line, so no stream is cut off silently.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._previous: dict[int, Any] = {}

    def begin(self) -> None:
        self.draining = True

    def install(self) -> None:
        """Chain onto the current handlers (uvicorn's, when it serves us); main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        self.draining = True
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            # Nobody else handles it: behave as if we had never been here.
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
