"""AuthorizationPolicy at the inbound edge: build the request view, answer denials.

The middleware consults :class:`~meshware.security.authz.Authorizer` (compiled by the mesh on
every config change) only when a policy applies to the workload; otherwise nothing here runs.
The path authorized is the *raw* request path, normalised once
(:func:`~meshware.security.paths.normalize_path`); the application then receives that
normalised path, so it routes exactly what was authorized (Istio does the same).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from meshware.security.authz import (
    DENIED_BODY,
    MALFORMED_BODY,
    AuthzRequest,
    Verdict,
)

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _raw_path(target: str) -> str:
    return target.partition("?")[0]


def asgi_request(scope: Scope, principal: str | None, header_names: frozenset[str]) -> AuthzRequest:
    headers: dict[str, str] = {}
    host = ""
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if name == "host" and not host:
            host = raw_value.decode("latin-1")
        if name in header_names:
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    server = scope.get("server")
    return AuthzRequest(
        method=scope["method"],
        path=_raw_path(path),
        host=host,
        port=int(server[1]) if server and server[1] else 0,
        headers=headers,
        principal=principal,
    )


def wsgi_request(
    environ: MutableMapping[str, Any], principal: str | None, header_names: frozenset[str]
) -> AuthzRequest:
    scope = environ.get("asgi.scope")  # a2wsgi under meshware serve: the raw path is there
    raw: str | None = None
    if scope is not None and scope.get("raw_path"):
        raw = scope["raw_path"].decode("latin-1")
    raw = raw or environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:  # no server gave the raw target: the decoded path is all there is
        raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    headers = {
        name: environ[key]
        for name in header_names
        if (key := "HTTP_" + name.upper().replace("-", "_")) in environ
    }
    return AuthzRequest(
        method=environ.get("REQUEST_METHOD", ""),
        path=_raw_path(raw),
        host=environ.get("HTTP_HOST", ""),
        port=int(environ.get("SERVER_PORT") or 0),
        headers=headers,
        principal=principal,
    )


def _body(verdict: Verdict) -> bytes:
    return MALFORMED_BODY if verdict.malformed else DENIED_BODY


async def deny_asgi(send: Send, verdict: Verdict) -> None:
    body = _body(verdict)
    await send(
        {
            "type": "http.response.start",
            "status": verdict.status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def deny_wsgi(start_response: Callable[..., Any], verdict: Verdict) -> list[bytes]:
    body = _body(verdict)
    reason = "Bad Request" if verdict.malformed else "Forbidden"
    start_response(
        f"{verdict.status} {reason}",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
