"""``MeshWSGIMiddleware``: the inbound half of the mesh for WSGI apps (Flask, Django, ...).

The request context is set in the request's thread from the request headers until the
server closes the response iterable (so a streaming body that makes outbound calls still
carries it), the request is counted in flight for graceful draining, Istio's golden metrics
are recorded as the destination when the response is closed (the caller's workload metadata
header is taken out of the environ and, for a mesh caller, answered with this workload's),
a sampled request's SERVER span ends when the response is closed, and the app's iterable is
always closed.

    flask_app.wsgi_app = MeshWSGIMiddleware(flask_app.wsgi_app, mesh=mesh)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import Token
from typing import Any
from urllib.parse import unquote_to_bytes

from meshware.mesh import Mesh
from meshware.middleware.authorize import deny_wsgi, wsgi_request
from meshware.middleware.context import RequestContext, current_context, from_headers
from meshware.security.paths import normalize_path
from meshware.security.peer import from_environ
from meshware.telemetry.access_log import Direction, RequestLine, inbound_values
from meshware.telemetry.cel import TagValue
from meshware.telemetry.meters import InboundMeter
from meshware.telemetry.metrics import Edge
from meshware.telemetry.overrides import evaluate
from meshware.telemetry.peers import Workload, parse_peer
from meshware.telemetry.spans import server_span

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_WANTED = {
    "HTTP_TRACEPARENT": "traceparent",
    "HTTP_TRACESTATE": "tracestate",
    "HTTP_BAGGAGE": "baggage",
    "HTTP_X_REQUEST_ID": "x-request-id",
    "HTTP_X_MESHWARE_DEADLINE_MS": "x-meshware-deadline-ms",
}


class MeshWSGIMiddleware:
    """See the module docstring."""

    def __init__(self, app: WSGIApp, *, mesh: Mesh) -> None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"MeshWSGIMiddleware needs mesh=Mesh(...), got {type(mesh).__name__}")
        self.app = app
        self.mesh = mesh

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        mesh = self.mesh
        found = {header: environ[key] for key, header in _WANTED.items() if key in environ}
        sticky = mesh.sticky_headers
        for name in sticky:
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in environ:
                found[name] = environ[key]
        tracer = mesh.tracer
        peer = from_environ(environ)
        context = from_headers(found, sticky_headers=sticky, sample=tracer.samples, peer=peer)
        environ.pop("HTTP_X_FORWARDED_CLIENT_CERT", None)  # only TLS says who the caller is
        caller = environ.pop(_PEER_KEY, None)  # the mesh's, not the app's
        metered = _Metered(mesh.metrics.inbound, parse_peer(caller), peer, environ, caller)
        start_response = metered.wrap(start_response)
        logged = mesh.access_log.policy.inbound
        tags = metered.meter.tags
        if logged is not None or tags:
            metered.log = _Details(mesh, logged, tags, environ, context, peer)
        authorizer = mesh.authorizer
        if not authorizer.empty:
            request = wsgi_request(environ, peer, authorizer.header_names)
            verdict = authorizer.check(request)
            if metered.log is not None:
                metered.log.audit = verdict.audit
            if not verdict.allowed:
                denied = deny_wsgi(start_response, verdict)
                metered.sent = sum(map(len, denied))
                metered.record()
                return denied
            normalized = normalize_path(request.path)
            if normalized is not None:  # the app routes what was authorized
                path = unquote_to_bytes(normalized).decode("latin-1")
                script = environ.get("SCRIPT_NAME", "")
                environ["PATH_INFO"] = path[len(script) :] if path.startswith(script) else path
        if "x-request-id" not in found:
            environ["HTTP_X_REQUEST_ID"] = context.request_id
        token = current_context.set(context)
        mesh.request_started()
        span = _ServerSpan(environ, context) if context.flags & 1 and tracer.enabled else None
        if span is not None:
            start_response = span.wrap(start_response)
        try:
            result = self.app(environ, start_response)
        except BaseException as exc:
            mesh.request_finished()
            current_context.reset(token)
            if metered.status is None and isinstance(exc, Exception):
                metered.status = 500  # what the server answers
            metered.record()
            if span is not None:
                span.end(mesh, exc)
            raise
        return _Response(result, mesh, token, context, span, metered)


_PEER_KEY = "HTTP_X_MESHWARE_PEER"


class _Metered:
    """The golden metrics of one WSGI request: status and body sizes, recorded at close()."""

    __slots__ = ("edge", "log", "meter", "received", "reply", "sent", "start", "status")

    def __init__(
        self,
        meter: InboundMeter,
        caller: Workload | None,
        principal: str | None,
        environ: Environ,
        raw: str | None,
    ) -> None:
        self.start = time.perf_counter()
        self.meter = meter
        self.edge: Edge = meter.edge(caller, principal)
        length = environ.get("CONTENT_LENGTH")
        self.received = int(length) if length and length.isdigit() else 0
        self.reply = (
            (meter.response_header[0].decode(), meter.response_header[1].decode())
            if raw is not None
            else None
        )
        self.status: int | None = None
        self.sent = 0
        self.log: _Details | None = None
        """Set when access logging is on for inbound requests, or metric tags need the
        request's details."""

    def wrap(self, start_response: StartResponse) -> StartResponse:
        def metered(status: str, headers: Any, exc_info: Any = None) -> Any:
            code = status[:3]
            self.status = int(code) if code.isdigit() else None
            if self.reply is not None:  # a mesh caller learns whom it reached
                headers = [*headers, self.reply]
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        return metered

    def record(self) -> None:
        elapsed = time.perf_counter() - self.start
        details = self.log
        if details is None:
            self.meter.record(self.edge, self.status, elapsed, self.received, self.sent)
            return
        line = details.line(self.status, elapsed, self.received, self.sent)
        extra = evaluate(details.tags, line.attributes()) if details.tags else ()
        self.meter.record(self.edge, self.status, elapsed, self.received, self.sent, extra)
        if details.direction is not None:
            details.mesh.access_log.emit(details.direction, line)


class _Details:
    """What the access log line and per-request metric tags of a WSGI request need from its
    start (the path as sent, before normalisation), used when the response is closed."""

    __slots__ = ("audit", "context", "direction", "environ", "mesh", "path", "principal", "tags")

    def __init__(
        self,
        mesh: Mesh,
        direction: Direction | None,
        tags: tuple[TagValue, ...],
        environ: Environ,
        context: RequestContext,
        principal: str | None,
    ) -> None:
        self.mesh = mesh
        self.direction = direction
        self.tags = tags
        self.environ = environ
        self.context = context
        self.principal = principal
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING")
        self.path = f"{path}?{query}" if query else path
        self.audit = False

    def line(self, status: int | None, elapsed: float, received: int, sent: int) -> RequestLine:
        environ = self.environ
        headers = {
            key[5:].lower().replace("_", "-"): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        remote, server = environ.get("REMOTE_ADDR"), environ.get("SERVER_NAME")
        remote_port, server_port = environ.get("REMOTE_PORT"), environ.get("SERVER_PORT")
        values = inbound_values(
            elapsed=elapsed,
            method=environ.get("REQUEST_METHOD", "GET"),
            path=self.path,
            protocol=environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            status=status,
            received=received,
            sent=sent,
            headers=headers,
            request_id=self.context.request_id,
            trace_id=self.context.trace_id,
            principal=self.principal,
            client=f"{remote}:{remote_port}" if remote and remote_port else remote,
            server=f"{server}:{server_port}" if server and server_port else None,
            audit=self.audit,
        )
        return RequestLine(
            values,
            headers,
            scheme=environ.get("wsgi.url_scheme", "http"),
            sampled=bool(self.context.flags & 1),
        )


class _ServerSpan:
    """The SERVER span of a sampled WSGI request: started with the call, ended at close()."""

    __slots__ = ("context", "environ", "start", "status")

    def __init__(self, environ: Environ, context: RequestContext) -> None:
        self.environ = environ
        self.context = context
        self.start = time.time_ns()
        self.status: int | None = None

    def wrap(self, start_response: StartResponse) -> StartResponse:
        def recording(status: str, headers: Any, exc_info: Any = None) -> Any:
            code = status[:3]
            self.status = int(code) if code.isdigit() else None
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        return recording

    def end(self, mesh: Mesh, error: BaseException | None = None) -> None:
        environ = self.environ
        rule = environ.get("werkzeug.request")
        route = getattr(getattr(rule, "url_rule", None), "rule", None)
        server_span(
            mesh.tracer,
            self.context,
            self.start,
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
            scheme=environ.get("wsgi.url_scheme", "http"),
            status=self.status,
            route=route,
            error=error,
            peer=environ.get("REMOTE_ADDR"),
        )


class _Response:
    """The app's iterable, keeping the request context and in-flight count until close()."""

    def __init__(
        self,
        inner: Iterable[bytes],
        mesh: Mesh,
        token: Token[RequestContext | None],
        context: RequestContext,
        span: _ServerSpan | None,
        metered: _Metered,
    ) -> None:
        self._inner = inner
        self._mesh = mesh
        self._token: Token[RequestContext | None] | None = token
        self._context = context
        self._span = span
        self._metered = metered

    def __iter__(self) -> Iterator[bytes]:
        token = current_context.set(self._context)  # servers may iterate elsewhere
        metered = self._metered
        try:
            for chunk in self._inner:
                metered.sent += len(chunk)
                yield chunk
        finally:
            current_context.reset(token)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            token, self._token = self._token, None
            if token is not None:
                self._mesh.request_finished()
                self._metered.record()
                if self._span is not None:
                    self._span.end(self._mesh)
                try:
                    current_context.reset(token)
                except ValueError:
                    current_context.set(None)  # closed from another context: just clear
