"""The verified peer of the request being handled: ``meshware.peer_identity()``.

The middleware takes the caller's identity only from the TLS connection it arrived on: the ASGI
``tls`` extension (filled by :mod:`meshware.security.uvicorn_tls` under ``meshware serve``), or
in WSGI the scope a2wsgi passes on (``asgi.scope``) or the server's socket
(``gunicorn.socket``, ``werkzeug.socket``). Identity headers sent by a client
(``x-forwarded-client-cert``) are never trusted: the middleware removes them before the
application sees the request.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from meshware.middleware.context import current
from meshware.security.tls import identity_of_der
from meshware.security.tls import peer_identity as socket_identity

__all__ = ["FORGEABLE_HEADER", "PEER_IDENTITY", "from_environ", "from_scope", "peer_identity"]

FORGEABLE_HEADER = "x-forwarded-client-cert"
"""The identity header a client could forge; removed from every inbound request."""

PEER_IDENTITY = "meshware.peer_identity"
"""Key of the caller's SPIFFE ID in the ASGI ``tls`` extension dict (see uvicorn_tls)."""


def peer_identity() -> str | None:
    """The SPIFFE ID of the verified caller of the current request, or None (plaintext, no
    client certificate, or outside a request)."""
    context = current()
    return context.peer if context is not None else None


@lru_cache(maxsize=1024)
def _identity_of_pem(pem: str) -> str | None:
    try:
        return identity_of_der(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError:
        return None


def from_scope(scope: Mapping[str, Any]) -> str | None:
    """The caller's SPIFFE ID from the ASGI ``tls`` extension, if the server provides it."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if extensions else None
    if not tls:
        return None
    if PEER_IDENTITY in tls:
        identity: str | None = tls[PEER_IDENTITY]
        return identity
    chain = tls.get("client_cert_chain")  # another server implementing the extension
    return _identity_of_pem(chain[0]) if chain else None


def from_environ(environ: Mapping[str, Any]) -> str | None:
    """The caller's SPIFFE ID for a WSGI request (a2wsgi scope, gunicorn or werkzeug socket)."""
    scope = environ.get("asgi.scope")
    if scope is not None:
        return from_scope(scope)
    for key in ("gunicorn.socket", "werkzeug.socket"):
        sock = environ.get(key)
        if isinstance(sock, ssl.SSLSocket):
            return socket_identity(sock)
    return None
