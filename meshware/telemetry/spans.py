"""The spans of one outbound call: a CLIENT span for the logical request, one child per attempt.

A :class:`ClientCall` exists only for a sampled request (:func:`client_span`), so an
unsampled call allocates nothing for tracing. Each attempt has its own span id and the
upstream request carries it as the parent in its ``traceparent``: the callee's SERVER span
hangs under the attempt that reached it, so a retried call shows which attempt failed, where,
and why.

The transports drive every call, sampled or not, through
:class:`~meshware.telemetry.calls.OutboundCall`, which holds a :class:`ClientCall` for a
sampled one and hands it the call's response flags (:mod:`meshware.telemetry.flags`).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from meshware.middleware.context import KNOWN_FLAGS, RequestContext, new_id
from meshware.routing.table import RouteDecision
from meshware.telemetry.tracing import SpanKind, Tracer

__all__ = ["ClientCall", "Headers", "client_span", "server_span"]

Headers = list[tuple[bytes, bytes]]


class ClientCall:
    """Records one sampled outbound call (see the module docstring)."""

    __slots__ = (
        "_attempt_id",
        "_attempt_start",
        "attempts",
        "attributes",
        "context",
        "name",
        "span_id",
        "start",
        "tracer",
    )

    def __init__(
        self,
        tracer: Tracer,
        context: RequestContext,
        request: httpx.Request,
        decision: RouteDecision,
    ) -> None:
        self.tracer = tracer
        self.context = context
        self.span_id = new_id(8)
        self.start = time.time_ns()
        url = request.url
        method = request.method
        self.name = f"{method} {url.host}"  # the service as the caller named it
        self.attempts = 0
        self._attempt_id = ""
        self._attempt_start = 0
        self.attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.full": str(url),
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "meshware.destination.service": decision.service_host,
            "meshware.destination.subset": decision.subset,
            "meshware.route": decision.route_name,
        }
        if decision.virtual_service:
            self.attributes["meshware.virtual_service"] = decision.virtual_service

    def fault(self, kind: str) -> None:
        """An injected fault: ``delay`` or ``abort``."""
        self.attributes["meshware.fault_injected"] = kind

    def attempt_headers(self, headers: Headers) -> Headers:
        """Start an attempt: ``headers`` with this attempt's span as the ``traceparent`` parent.

        A ``traceparent`` the application set itself is left alone.
        """
        self.attempts += 1
        self._attempt_id = new_id(8)
        self._attempt_start = time.time_ns()
        ours = self.context.traceparent().encode()
        flags = self.context.flags & KNOWN_FLAGS  # sampled, random-trace-id
        mine = f"00-{self.context.trace_id}-{self._attempt_id}-{flags:02x}".encode()
        return [(name, mine if value == ours else value) for name, value in headers]

    def attempt_end(
        self, address: str, status: int | None = None, error: BaseException | None = None
    ) -> None:
        """End the current attempt: answered with ``status`` or failed with ``error``."""
        host, _, port = address.rpartition(":")
        attributes: dict[str, Any] = {
            "http.request.method": self.attributes["http.request.method"],
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
            "meshware.attempt": self.attempts,
        }
        if self.attempts > 1:
            attributes["http.request.resend_count"] = self.attempts - 1
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            attributes["error.type"] = type(error).__name__
        self.tracer.emit(
            f"attempt {self.attempts}",
            SpanKind.CLIENT,
            self.context.trace_id,
            self._attempt_id,
            self.span_id,
            self._attempt_start,
            time.time_ns(),
            attributes,
            error=error is not None or (status is not None and status >= 500),
        )

    def finish(
        self, status: int | None = None, error: BaseException | None = None, flags: str = "-"
    ) -> None:
        """End the logical call's span; ``flags`` are its Envoy response flags (``-``: none)."""
        attributes = self.attributes
        attributes["meshware.attempts"] = self.attempts
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            attributes["error.type"] = type(error).__name__
        failed = error is not None or (status is not None and status >= 500)
        if self.attempts > 1:
            attributes["meshware.retried"] = True
        if flags != "-":
            attributes["meshware.response_flags"] = flags
        self.tracer.emit(
            self.name,
            SpanKind.CLIENT,
            self.context.trace_id,
            self.span_id,
            self.context.span_id,
            self.start,
            time.time_ns(),
            attributes,
            error=failed,
        )


def client_span(
    tracer: Tracer | None,
    context: RequestContext | None,
    request: httpx.Request,
    decision: RouteDecision,
) -> ClientCall | None:
    """A span recorder for this call, only if its request is sampled and tracing is on."""
    if tracer is None or context is None or not context.flags & 1 or not tracer.enabled:
        return None
    return ClientCall(tracer, context, request, decision)


def server_span(
    tracer: Tracer,
    context: RequestContext,
    start_ns: int,
    *,
    method: str,
    path: str,
    scheme: str,
    status: int | None,
    route: str | None = None,
    error: BaseException | None = None,
    peer: str | None = None,
) -> None:
    """Record the SERVER span of one inbound request (the middleware calls this at its end)."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scheme,
        "meshware.request_id": context.request_id,
    }
    if route:
        attributes["http.route"] = route
    if status is not None:
        attributes["http.response.status_code"] = status
    if error is not None:
        attributes["error.type"] = type(error).__name__
    if peer:
        attributes["client.address"] = peer
    tracer.emit(
        f"{method} {route}" if route else method,
        SpanKind.SERVER,
        context.trace_id,
        context.span_id,
        context.parent_id,
        start_ns,
        time.time_ns(),
        attributes,
        error=error is not None or status is None or status >= 500,
        remote_parent=True,
    )
