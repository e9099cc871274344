"""Connection pools to one endpoint, speaking httpcore directly (plaintext or mutual TLS).

An httpx transport would rebuild and re-validate a URL for every attempt (``copy_with`` costs
tens of microseconds); the mesh already knows the endpoint's address and the request target,
so it hands httpcore exactly that. httpcore errors are translated to the httpx exceptions of
the same name at this boundary, so callers see what plain httpx would raise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from meshware.transport.secure import AsyncVerifyingBackend, TLSTarget, VerifyingBackend

_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


@contextmanager
def translated(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for kind in type(exc).__mro__:
            mapped = _ERRORS.get(kind)
            if mapped is not None:
                raise mapped(str(exc) or type(exc).__name__, request=request) from exc
        raise


def _pool_options(limits: httpx.Limits) -> dict[str, Any]:
    return {
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": True,
        "http2": False,
        "retries": 0,
    }


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with translated(self._request):
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            with translated(self._request):
                self._stream.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with translated(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with translated(self._request):
                await self._stream.aclose()


Headers = list[tuple[bytes, bytes]]


class EndpointPool:
    """Keep-alive connections to one ``host:port`` (synchronous)."""

    def __init__(
        self, host: str, port: int, limits: httpx.Limits, tls: TLSTarget | None = None
    ) -> None:
        self._host = host.encode("ascii")
        self._port = port
        self._scheme = b"https" if tls is not None else b"http"
        options = _pool_options(limits)
        if tls is not None:
            options.update(ssl_context=tls.context, network_backend=VerifyingBackend(tls))
        self._pool = httpcore.ConnectionPool(**options)

    def send(
        self,
        request: httpx.Request,
        target: bytes,
        headers: Headers,
        timeout: dict[str, float | None],
    ) -> httpx.Response:
        core = httpcore.Request(
            request.method.encode("ascii"),
            httpcore.URL(scheme=self._scheme, host=self._host, port=self._port, target=target),
            headers=headers,
            content=request.stream,
            extensions={"timeout": timeout},
        )
        with translated(request):
            response = self._pool.handle_request(core)
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_SyncBody(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class AsyncEndpointPool:
    """Keep-alive connections to one ``host:port`` (asyncio)."""

    def __init__(
        self, host: str, port: int, limits: httpx.Limits, tls: TLSTarget | None = None
    ) -> None:
        self._host = host.encode("ascii")
        self._port = port
        self._scheme = b"https" if tls is not None else b"http"
        options = _pool_options(limits)
        if tls is not None:
            options.update(ssl_context=tls.context, network_backend=AsyncVerifyingBackend(tls))
        self._pool = httpcore.AsyncConnectionPool(**options)

    async def send(
        self,
        request: httpx.Request,
        target: bytes,
        headers: Headers,
        timeout: dict[str, float | None],
    ) -> httpx.Response:
        core = httpcore.Request(
            request.method.encode("ascii"),
            httpcore.URL(scheme=self._scheme, host=self._host, port=self._port, target=target),
            headers=headers,
            content=request.stream,
            extensions={"timeout": timeout},
        )
        with translated(request):
            response = await self._pool.handle_async_request(core)
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_AsyncBody(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
