"""``MeshWSGIMiddleware``: the inbound half of the mesh for WSGI apps (Flask, Django, ...).

The request context is set in the request's thread from the request headers until the
server closes the response iterable (so a streaming body that makes outbound calls still
carries it), the request is counted in flight for graceful draining, a sampled request's
SERVER span ends when the response is closed, and the app's iterable is always closed.

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
        authorizer = mesh.authorizer
        if not authorizer.empty:
            request = wsgi_request(environ, peer, authorizer.header_names)
            verdict = authorizer.check(request)
            if not verdict.allowed:
                return deny_wsgi(start_response, verdict)
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
            if span is not None:
                span.end(mesh, exc)
            raise
        return _Response(result, mesh, token, context, span)


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
    ) -> None:
        self._inner = inner
        self._mesh = mesh
        self._token: Token[RequestContext | None] | None = token
        self._context = context
        self._span = span

    def __iter__(self) -> Iterator[bytes]:
        token = current_context.set(self._context)  # servers may iterate elsewhere
        try:
            yield from self._inner
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
                if self._span is not None:
                    self._span.end(self._mesh)
                try:
                    current_context.reset(token)
                except ValueError:
                    current_context.set(None)  # closed from another context: just clear
