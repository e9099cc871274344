"""Response bodies of the endpoint pools: httpcore errors while streaming surface as httpx's."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator

import httpcore
import httpx
import pytest

from meshware.transport.endpoint import _MAX_URLS, _AsyncBody, _Endpoint, _SyncBody
from meshware.transport.secure import TLSTarget

REQUEST = httpx.Request("GET", "http://reviews/")


class SyncStream:
    def __init__(self, fail: Exception | None = None, close_fails: Exception | None = None):
        self.fail = fail
        self.close_fails = close_fails
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"hello, "
        if self.fail is not None:
            raise self.fail
        yield b"world"

    def close(self) -> None:
        self.closed = True
        if self.close_fails is not None:
            raise self.close_fails


class AsyncStream:
    def __init__(self, fail: Exception | None = None, close_fails: Exception | None = None):
        self.fail = fail
        self.close_fails = close_fails
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"hello, "
        if self.fail is not None:
            raise self.fail
        yield b"world"

    async def aclose(self) -> None:
        self.closed = True
        if self.close_fails is not None:
            raise self.close_fails


def test_sync_body_streams_every_chunk() -> None:
    stream = SyncStream()
    response = httpx.Response(200, stream=_SyncBody(stream, REQUEST), request=REQUEST)
    assert response.read() == b"hello, world"
    assert stream.closed
    assert list(_SyncBody(SyncStream(), REQUEST)) == [b"hello, ", b"world"]


def test_async_body_streams_every_chunk() -> None:
    async def main() -> None:
        stream = AsyncStream()
        response = httpx.Response(200, stream=_AsyncBody(stream, REQUEST), request=REQUEST)
        assert await response.aread() == b"hello, world"
        assert stream.closed
        body = _AsyncBody(AsyncStream(), REQUEST)
        assert [chunk async for chunk in body] == [b"hello, ", b"world"]
        assert [chunk async for chunk in body] == [b"hello, ", b"world"]  # iterable again

    asyncio.run(main())


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpcore.ReadError("reset by peer"), httpx.ReadError),
        (httpcore.RemoteProtocolError("peer closed"), httpx.RemoteProtocolError),
        (httpcore.ReadTimeout("timed out"), httpx.ReadTimeout),
    ],
)
def test_sync_read_error_mid_body_is_httpx_error(
    raised: Exception, expected: type[httpx.TransportError]
) -> None:
    response = httpx.Response(200, stream=_SyncBody(SyncStream(raised), REQUEST), request=REQUEST)
    with pytest.raises(expected) as info:
        response.read()
    assert info.value.__cause__ is raised
    assert info.value.request is REQUEST
    assert str(info.value) == str(raised)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpcore.ReadError("reset by peer"), httpx.ReadError),
        (httpcore.RemoteProtocolError("peer closed"), httpx.RemoteProtocolError),
        (httpcore.ReadTimeout("timed out"), httpx.ReadTimeout),
        (httpcore.ReadError(), httpx.ReadError),  # no message: the type's name
    ],
)
def test_async_read_error_mid_body_is_httpx_error(
    raised: Exception, expected: type[httpx.TransportError]
) -> None:
    async def main() -> None:
        stream = AsyncStream(raised)
        response = httpx.Response(200, stream=_AsyncBody(stream, REQUEST), request=REQUEST)
        with pytest.raises(expected) as info:
            await response.aread()
        assert info.value.__cause__ is raised
        assert info.value.request is REQUEST
        assert str(info.value) == (str(raised) or type(raised).__name__)

    asyncio.run(main())


class Oops(Exception):
    """Not an httpcore error."""


def test_other_errors_pass_through_unchanged() -> None:
    oops = Oops()
    with pytest.raises(Oops) as sync_info:
        list(_SyncBody(SyncStream(oops), REQUEST))
    assert sync_info.value is oops

    async def main() -> None:
        with pytest.raises(Oops) as info:
            [chunk async for chunk in _AsyncBody(AsyncStream(oops), REQUEST)]
        assert info.value is oops

    asyncio.run(main())


def test_close_errors_are_translated() -> None:
    with pytest.raises(httpx.ReadError):
        _SyncBody(SyncStream(close_fails=httpcore.ReadError("gone")), REQUEST).close()

    async def main() -> None:
        body = _AsyncBody(AsyncStream(close_fails=httpcore.ReadError("gone")), REQUEST)
        with pytest.raises(httpx.ReadError):
            await body.aclose()

    asyncio.run(main())


def test_the_request_handed_to_httpcore_is_what_httpcore_would_build() -> None:
    """``_Endpoint._request`` skips httpcore's header validation and reuses URLs: the request
    must still equal one httpcore builds itself from the same parts."""
    endpoint = _Endpoint("10.0.0.7", 9080, None)
    request = httpx.Request("POST", "http://reviews/reviews/0?x=1", content=b"body")
    headers = [(b"host", b"reviews"), (b"X-Trace", b"a b"), (b"content-length", b"4")]
    timeout: dict[str, float | None] = {"connect": 1.0, "read": 2.0, "write": None, "pool": 3.0}

    ours = endpoint._request(request, b"/reviews/0?x=1", headers, timeout)
    theirs = httpcore.Request(
        b"POST",
        httpcore.URL(scheme=b"http", host=b"10.0.0.7", port=9080, target=b"/reviews/0?x=1"),
        headers=headers,
        content=request.stream,
        extensions={"timeout": timeout},
    )
    assert ours.method == theirs.method
    assert (ours.url.scheme, ours.url.host, ours.url.port, ours.url.target) == (
        theirs.url.scheme,
        theirs.url.host,
        theirs.url.port,
        theirs.url.target,
    )
    assert ours.headers == theirs.headers
    assert ours.stream is theirs.stream
    assert ours.extensions == theirs.extensions
    # the URL is remembered per target, and the memo stays bounded
    assert endpoint._request(request, b"/reviews/0?x=1", headers, timeout).url is ours.url
    for i in range(_MAX_URLS + 1):
        endpoint._url(b"/%d" % i)
    assert len(endpoint._urls) <= _MAX_URLS
    tls = _Endpoint(
        "10.0.0.8",
        443,
        TLSTarget(ssl.create_default_context(), "spiffe://mesh/ns/default/sa/reviews"),
    )
    assert tls._request(request, b"/", headers, timeout).url.scheme == b"https"
