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

from meshware.telemetry.peers import PEER_HEADER
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


def _mapped(exc: Exception, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx exception an httpcore one stands for, caused by it (None: not an httpcore
    error).

    The cause is set here too: mypyc, which compiles this module, ignores the ``from`` of
    ``raise mapped from exc``, so only this keeps the compiled module's exceptions chained
    as the Python one's are (``__cause__`` set, the context suppressed).
    """
    for kind in type(exc).__mro__:
        mapped = _ERRORS.get(kind)
        if mapped is not None:
            error = mapped(str(exc) or type(exc).__name__, request=request)
            error.__cause__ = exc
            return error
    return None


@contextmanager
def translated(request: httpx.Request) -> Iterator[None]:
    """Raise httpcore errors inside the block as their httpx counterparts."""
    try:
        yield
    except Exception as exc:
        mapped = _mapped(exc, request)
        if mapped is None:
            raise
        raise mapped from exc


def _pool_options(limits: httpx.Limits) -> dict[str, Any]:
    return {
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": True,
        "http2": False,
        "retries": 0,
    }


class _SyncChunks:
    """One iteration over an httpcore response body, httpcore errors translated."""

    __slots__ = ("_chunks", "_request")

    def __init__(self, chunks: Iterator[bytes], request: httpx.Request) -> None:
        self._chunks = chunks
        self._request = request

    def __iter__(self) -> _SyncChunks:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise
        except Exception as exc:
            mapped = _mapped(exc, self._request)
            if mapped is None:
                raise
            raise mapped from exc


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        return _SyncChunks(iter(self._stream), self._request)

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            try:
                self._stream.close()
            except Exception as exc:
                mapped = _mapped(exc, self._request)
                if mapped is None:
                    raise
                raise mapped from exc


class _AsyncChunks:
    """One iteration over an httpcore response body, httpcore errors translated.

    A class rather than an async generator: no generator object and no run of asyncio's
    first-iteration hook per response, and mypyc (which has no async generators) compiles it.
    Like the generator it replaces, it lives only as long as the ``async for`` using it.
    """

    __slots__ = ("_chunks", "_request")

    def __init__(self, chunks: AsyncIterator[bytes], request: httpx.Request) -> None:
        self._chunks = chunks
        self._request = request

    def __aiter__(self) -> _AsyncChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            mapped = _mapped(exc, self._request)
            if mapped is None:
                raise
            raise mapped from exc


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _AsyncChunks(self._stream.__aiter__(), self._request)

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            try:
                await self._stream.aclose()
            except Exception as exc:
                mapped = _mapped(exc, self._request)
                if mapped is None:
                    raise
                raise mapped from exc


Headers = list[tuple[bytes, bytes]]

_PEER = PEER_HEADER.encode("latin-1")
_LENGTH = b"content-length"
_MAX_URLS = 1024

Reply = tuple[httpx.Response, bytes | None, int | None]
"""What an endpoint answered: the response (without :data:`PEER_HEADER`), the value of that
header (the destination's workload metadata) and the declared ``content-length``."""


def _taken(
    fields: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bytes | None, int | None]:
    """Split the peer metadata out of response header ``fields`` and read the body length,
    in one pass over the raw fields (httpx's ``Headers`` lookups cost far more)."""
    peer: bytes | None = None
    length: int | None = None
    kept: list[tuple[bytes, bytes]] = []
    for field in fields:
        name, value = field
        lower = name.lower()
        if lower == _PEER:
            peer = value
            continue
        if lower == _LENGTH and value.isdigit():
            length = int(value)
        kept.append(field)
    return (fields if peer is None else kept), peer, length


class _Endpoint:
    """What both pools share: the endpoint's address and the request/response conversions."""

    def __init__(self, host: str, port: int, tls: TLSTarget | None) -> None:
        self._host = host.encode("ascii")
        self._port = port
        self._scheme = b"https" if tls is not None else b"http"
        self._urls: dict[bytes, httpcore.URL] = {}

    def _url(self, target: bytes) -> httpcore.URL:
        """The httpcore URL of ``target`` at this endpoint (remembered: a bounded memo)."""
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            url = httpcore.URL(scheme=self._scheme, host=self._host, port=self._port, target=target)
            self._urls[target] = url
        return url

    def _request(
        self,
        request: httpx.Request,
        target: bytes,
        headers: Headers,
        timeout: dict[str, float | None],
    ) -> httpcore.Request:
        core = httpcore.Request(
            request.method.encode("ascii"),
            self._url(target),
            content=request.stream,
            extensions={"timeout": timeout},
        )
        # ``headers`` is a list of (bytes, bytes) pairs already, which is all httpcore's
        # validation would make of it: it would copy the list and type-check every name and
        # value, at several times the cost of building the rest of the request.
        core.headers = headers
        return core


def _reply(
    response: httpcore.Response, body: httpx.SyncByteStream | httpx.AsyncByteStream
) -> Reply:
    fields, peer, length = _taken(response.headers)
    reply = httpx.Response(
        response.status, headers=fields, stream=body, extensions=response.extensions
    )
    return reply, peer, length


class EndpointPool(_Endpoint):
    """Keep-alive connections to one ``host:port`` (synchronous)."""

    def __init__(
        self, host: str, port: int, limits: httpx.Limits, tls: TLSTarget | None = None
    ) -> None:
        super().__init__(host, port, tls)
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
    ) -> Reply:
        try:
            response = self._pool.handle_request(self._request(request, target, headers, timeout))
        except Exception as exc:
            mapped = _mapped(exc, request)
            if mapped is None:
                raise
            raise mapped from exc
        return _reply(response, _SyncBody(response.stream, request))

    def close(self) -> None:
        self._pool.close()


class AsyncEndpointPool(_Endpoint):
    """Keep-alive connections to one ``host:port`` (asyncio)."""

    def __init__(
        self, host: str, port: int, limits: httpx.Limits, tls: TLSTarget | None = None
    ) -> None:
        super().__init__(host, port, tls)
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
    ) -> Reply:
        core = self._request(request, target, headers, timeout)
        try:
            response = await self._pool.handle_async_request(core)
        except Exception as exc:
            mapped = _mapped(exc, request)
            if mapped is None:
                raise
            raise mapped from exc
        return _reply(response, _AsyncBody(response.stream, request))

    async def aclose(self) -> None:
        await self._pool.aclose()
