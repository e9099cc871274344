"""Serving mutual TLS under uvicorn, with the verified client certificate in the ASGI scope.

The ASGI ``tls`` extension (``scope["extensions"]["tls"]``) is specified but no released Python
server fills it in yet. This adapter does, for uvicorn's h11 protocol: when a TLS connection
is made it reads the verified peer certificate once, builds the extension dict, and hands
every request on that connection a scope carrying it. The SPIFFE ID is computed at the same
time and kept in the dict under ``meshware.peer_identity``, so requests pay nothing for it.

It depends on uvicorn internals (the protocol reads ``self.app`` for each request), so it is
pinned to the uvicorn releases it was tested with: :data:`TESTED` (checked at startup).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from meshware.errors import MeshwareError
from meshware.security.peer import PEER_IDENTITY
from meshware.security.tls import peer_identity

__all__ = ["PEER_IDENTITY", "TESTED", "MeshH11Protocol", "check_uvicorn", "tls_extension"]

TESTED = ((0, 30), (0, 55))
"""uvicorn versions from the first to the last (exclusive) the adapter supports."""

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def check_uvicorn(version: str = uvicorn.__version__) -> None:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    low, high = TESTED
    if not low <= parts < high:
        raise MeshwareError(
            f"meshware serve (mutual TLS, PeerAuthentication) supports uvicorn "
            f"{low[0]}.{low[1]} to before {high[0]}.{high[1]}, found {version}"
        )


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension for a connection (plus the peer's SPIFFE ID)."""
    der = ssl_object.getpeercert(True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": ssl_object.version(),
        "cipher_suite": cipher[0] if cipher else None,
        PEER_IDENTITY: peer_identity(ssl_object),
    }


class MeshH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the ``tls`` extension to each scope of a TLS connection."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        extension = tls_extension(ssl_object)
        app: ASGIApp = self.app

        async def with_tls(
            scope: MutableMapping[str, Any],
            receive: Callable[[], Awaitable[Any]],
            send: Callable[[Any], Awaitable[None]],
        ) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
            await app(scope, receive, send)

        self.app = with_tls
