"""``MeshMiddleware``: the inbound half of the mesh for ASGI apps (FastAPI, Starlette, ...).

Per HTTP request it builds the :class:`~meshware.middleware.context.RequestContext` from the
request headers, sets it for the request's task (tasks the app spawns inherit it), counts the
request in flight for graceful draining, records Istio's golden metrics as the destination
(the caller's workload metadata header is taken out of the request and, for a mesh caller,
answered with this workload's; see :mod:`meshware.telemetry.peers`), records a SERVER span
when the request is sampled, and, while the instance drains, asks clients to close their
connection. Websocket and lifespan scopes pass through untouched; the response is never
buffered.

    app.add_middleware(MeshMiddleware, mesh=mesh)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from meshware.mesh import Mesh
from meshware.middleware.authorize import asgi_request, deny_asgi
from meshware.middleware.context import RequestContext, current_context, from_headers
from meshware.security.authz import Verdict
from meshware.security.paths import normalize_path
from meshware.security.peer import FORGEABLE_HEADER, from_scope
from meshware.telemetry.access_log import RequestLine, inbound_values
from meshware.telemetry.overrides import evaluate
from meshware.telemetry.peers import PEER_HEADER, parse_peer
from meshware.telemetry.spans import server_span

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WANTED = frozenset(
    {
        "traceparent",
        "tracestate",
        "baggage",
        "x-request-id",
        "x-meshware-deadline-ms",
        "content-length",
        FORGEABLE_HEADER,
        PEER_HEADER,
    }
)
_WANTED_NAMES = {name.encode("latin-1"): name for name in _WANTED}
"""The names of :data:`_WANTED` as ASGI servers give them (bytes), to the names as read."""
_REMOVED = frozenset({FORGEABLE_HEADER.encode(), PEER_HEADER.encode()})
"""Request headers the application never sees: a forgeable identity, the peer metadata."""
_JOINED = frozenset({"traceparent", "tracestate", "baggage"})
"""Headers whose repeated fields are joined with commas, as WSGI servers do: ``tracestate`` and
``baggage`` are lists; ``traceparent`` is not, so two of them make it invalid (a new trace)."""


class MeshMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, mesh: Mesh) -> None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"MeshMiddleware needs mesh=Mesh(...), got {type(mesh).__name__}")
        self.app = app
        self.mesh = mesh
        self._sticky: frozenset[str] = frozenset()
        self._wanted: dict[bytes, str] = _WANTED_NAMES

    def _wanted_for(self, sticky: frozenset[str]) -> dict[bytes, str]:
        """Header names to read, as bytes, to the same names decoded; rebuilt only when the
        sticky headers change."""
        if sticky is not self._sticky:
            self._wanted = _WANTED_NAMES | {name.encode("latin-1"): name for name in sticky}
            self._sticky = sticky
        return self._wanted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mesh = self.mesh
        sticky = mesh.sticky_headers
        wanted = self._wanted_for(sticky)
        found: dict[str, str] = {}
        strip = False
        # The headers without _REMOVED ones, built while reading: mesh callers send their
        # metadata, so most requests need this list, and a second pass would cost more.
        kept: list[tuple[bytes, bytes]] = []
        # ASGI servers lower-case header names: look the raw bytes up, decode only values read
        for header in scope["headers"]:
            raw_name, raw_value = header
            name = wanted.get(raw_name)
            if name is not None:
                if name not in found:
                    found[name] = raw_value.decode("latin-1")
                elif name in _JOINED:  # repeated fields, joined in order (RFC 9110 §5.3)
                    found[name] = f"{found[name]},{raw_value.decode('latin-1')}"
                if raw_name in _REMOVED:
                    strip = True
                    continue
            kept.append(header)
        start = time.perf_counter()
        tracer = mesh.tracer
        peer = from_scope(scope)
        context = from_headers(found, sticky_headers=sticky, sample=tracer.samples, peer=peer)
        caller = found.get(PEER_HEADER)
        if strip:  # only the TLS connection says who the caller is; the metadata is the mesh's
            scope["headers"] = kept
        meter = mesh.metrics.inbound
        edge = meter.edge(parse_peer(caller), peer)
        length = found.get("content-length")
        received = int(length) if length is not None and length.isdigit() else 0
        reply = meter.response_header if caller is not None else None
        status: int | None = None
        sent = 0

        async def metered(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                if reply is not None:  # a mesh caller learns whom it reached
                    message = {**message, "headers": [*message.get("headers", ()), reply]}
            await send(message)

        logged = mesh.access_log.policy.inbound
        tags = meter.tags
        detailed = logged is not None or bool(tags)  # the request's details are needed
        original = _original_path(scope) if detailed else ""
        audit = False
        denied: Verdict | None = None
        authorizer = mesh.authorizer
        if not authorizer.empty:
            request = asgi_request(scope, peer, authorizer.header_names)
            verdict = authorizer.check(request)
            audit = verdict.audit
            if not verdict.allowed:
                denied = verdict
            else:
                normalized = normalize_path(request.path)
                if normalized is not None:  # the app routes what was authorized
                    scope["raw_path"] = normalized.encode("latin-1")
                    scope["path"] = unquote(normalized)
        if "x-request-id" not in found:
            # The app sees the id the mesh generated, as behind Envoy.
            scope["headers"] = [*scope["headers"], (b"x-request-id", context.request_id.encode())]
        token = current_context.set(context)
        mesh.request_started()
        if mesh.draining:
            send = _closing(send)
        failed = False
        try:
            if denied is not None:
                await deny_asgi(metered, denied)
            elif context.flags & 1 and tracer.enabled:
                await self._traced(scope, receive, metered, context)
            else:
                await self.app(scope, receive, metered)
        except Exception:
            # the server answers 500 unless a response was started (a refusal that could not
            # be sent is a caller gone away, as before)
            failed = denied is None
            raise
        finally:
            mesh.request_finished()
            current_context.reset(token)
            if status is None and failed:
                status = 500
            elapsed = time.perf_counter() - start
            if not detailed:
                meter.record(edge, status, elapsed, received, sent)
            else:
                line = _line(scope, original, context, peer, status, elapsed, received, sent, audit)
                extra = evaluate(tags, line.attributes()) if tags else ()
                meter.record(edge, status, elapsed, received, sent, extra)
                if logged is not None:
                    mesh.access_log.emit(logged, line)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        """Run the app for a sampled request and record its SERVER span."""
        start = time.time_ns()
        status: int | None = None

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, recording)
        except BaseException as exc:
            error = exc
            raise
        finally:
            route = scope.get("route")
            client = scope.get("client")
            server_span(
                self.mesh.tracer,
                context,
                start,
                method=scope["method"],
                path=scope["path"],
                scheme=scope.get("scheme", "http"),
                status=status,
                route=getattr(route, "path", None),
                error=error,
                peer=client[0] if client else None,
            )


def _original_path(scope: Scope) -> str:
    """The request target as the client sent it (before normalisation for authorization)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "")
    query = scope.get("query_string")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _line(
    scope: Scope,
    path: str,
    context: RequestContext,
    principal: str | None,
    status: int | None,
    elapsed: float,
    received: int,
    sent: int,
    audit: bool,
) -> RequestLine:
    """An inbound request's details, for its access log line and per-request metric tags
    (only built when one of them is on)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    client, server = scope.get("client"), scope.get("server")
    values = inbound_values(
        elapsed=elapsed,
        method=scope["method"],
        path=path,
        protocol=f"HTTP/{scope.get('http_version', '1.1')}",
        status=status,
        received=received,
        sent=sent,
        headers=headers,
        request_id=context.request_id,
        trace_id=context.trace_id,
        principal=principal,
        client=f"{client[0]}:{client[1]}" if client else None,
        server=f"{server[0]}:{server[1]}" if server else None,
        audit=audit,
    )
    return RequestLine(
        values, headers, scheme=scope.get("scheme", "http"), sampled=bool(context.flags & 1)
    )


def _closing(send: Send) -> Send:
    """Add ``connection: close`` to the response: a draining instance sheds keep-alive clients."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped


__all__ = ["MeshMiddleware"]
