"""Response body wrappers that run a callback exactly once when the body is closed.

They keep per-destination bookkeeping (active requests, least-request counters) true for
streaming responses without ever buffering them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx


class ClosingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback()


class AsyncClosingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback()
