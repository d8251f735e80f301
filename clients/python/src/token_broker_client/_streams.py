"""NDJSON streams as iterators that cannot be mistaken for complete when they were not.

The broker streams one item per line and ends every stream with one status line:
`{"status": "complete", ...}` (read into `summary`) or `{"status": "failed",
"error": <problem>}` (raised as that problem's exception). A stream that stops
without that line, or whose count disagrees with what arrived, raises
`IncompleteStream`: whatever was received is not the whole listing (or the whole
set of changes: ask again with the same cursor).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from token_broker_client._calls import StreamCall
from token_broker_client._errors import (
    IncompleteStream,
    UnexpectedResponse,
    problem_from_body,
)

Item = TypeVar("Item")
Summary = TypeVar("Summary")


class _Lines(Generic[Item, Summary]):
    """Reads a stream's lines in order; the rules shared by both kinds of iterator."""

    def __init__(self, call: StreamCall[Item, Summary]) -> None:
        self.call = call
        self.received = 0
        self.summary: Summary | None = None
        self._garbled = False

    def read(self, line: str) -> Item | None:
        """The item on this line; None for a blank line or the final one."""
        if not line.strip():
            return None
        if self.summary is not None:
            raise UnexpectedResponse("the stream went on after its final line", status=200)
        if self._garbled:
            raise UnexpectedResponse("a stream line that is not JSON", status=200)
        try:
            value: Any = json.loads(line)
        except ValueError:
            # The last line of a stream cut mid-line: `end` says so, unless more follows.
            self._garbled = True
            return None
        if isinstance(value, dict) and "status" in value:
            self._finish(value)
            return None
        self.received += 1
        return self.call.item(value)

    def _finish(self, final: dict[str, Any]) -> None:
        if final["status"] == "failed":
            error = final.get("error")
            problem = error if isinstance(error, dict) else {"code": "internal_error"}
            status = problem.get("status")
            raise problem_from_body(problem, status=status if isinstance(status, int) else 500)
        if final["status"] != "complete":
            raise UnexpectedResponse(f"unknown final status {final['status']!r}", status=200)
        summary = self.call.summary(final)
        count = final.get(self.call.counted)
        if isinstance(count, int) and count != self.received:
            raise IncompleteStream(
                f"the stream said {count} items but {self.received} arrived",
                received=self.received,
            )
        self.summary = summary

    def end(self, cause: BaseException | None = None) -> None:
        """The stream ended (or broke, `cause`): raise unless its final line arrived."""
        if self.summary is None:
            how = f" ({type(cause).__name__})" if cause is not None else ""
            raise IncompleteStream(
                f"the stream ended after {self.received} items without its final line{how}; "
                "what arrived is incomplete",
                received=self.received,
            ) from cause


class AsyncStream(Generic[Item, Summary]):
    """`async with client.stream_messages(...) as stream: async for item in stream: ...`

    After the loop, `summary` holds the final line. Iterating without `async with`
    also works; the connection is closed when the loop ends.
    """

    def __init__(
        self,
        call: StreamCall[Item, Summary],
        open_stream: Callable[[StreamCall[Item, Summary]], Awaitable[httpx.Response]],
    ) -> None:
        self._lines = _Lines(call)
        self._open_stream = open_stream
        self._response: httpx.Response | None = None
        self._started = False

    @property
    def summary(self) -> Summary | None:
        return self._lines.summary

    @property
    def received(self) -> int:
        return self._lines.received

    async def __aenter__(self) -> AsyncStream[Item, Summary]:
        await self._open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> httpx.Response:
        if self._response is None:
            self._response = await self._open_stream(self._lines.call)
        return self._response

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()

    def __aiter__(self) -> AsyncIterator[Item]:
        if self._started:
            raise RuntimeError("a stream can be iterated once")
        self._started = True
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        response = await self._open()
        try:
            try:
                async for line in response.aiter_lines():
                    item = self._lines.read(line)
                    if item is not None:
                        yield item
            except httpx.TransportError as error:
                self._lines.end(error)
            self._lines.end()
        finally:
            await response.aclose()

    async def collect(self) -> list[Item]:
        """Every item, once the stream has ended complete."""
        async with self:
            return [item async for item in self]


class SyncStream(Generic[Item, Summary]):
    """`with client.stream_messages(...) as stream: for item in stream: ...`; then `summary`."""

    def __init__(
        self,
        call: StreamCall[Item, Summary],
        open_stream: Callable[[StreamCall[Item, Summary]], httpx.Response],
    ) -> None:
        self._lines = _Lines(call)
        self._open_stream = open_stream
        self._response: httpx.Response | None = None
        self._started = False

    @property
    def summary(self) -> Summary | None:
        return self._lines.summary

    @property
    def received(self) -> int:
        return self._lines.received

    def __enter__(self) -> SyncStream[Item, Summary]:
        self._open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> httpx.Response:
        if self._response is None:
            self._response = self._open_stream(self._lines.call)
        return self._response

    def close(self) -> None:
        if self._response is not None:
            self._response.close()

    def __iter__(self) -> Iterator[Item]:
        if self._started:
            raise RuntimeError("a stream can be iterated once")
        self._started = True
        return self._items()

    def _items(self) -> Iterator[Item]:
        response = self._open()
        try:
            try:
                for line in response.iter_lines():
                    item = self._lines.read(line)
                    if item is not None:
                        yield item
            except httpx.TransportError as error:
                self._lines.end(error)
            self._lines.end()
        finally:
            response.close()

    def collect(self) -> list[Item]:
        """Every item, once the stream has ended complete."""
        with self:
            return list(self)
