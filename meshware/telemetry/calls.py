"""The telemetry of one logical outbound call: metrics always, spans when sampled.

The transports drive an :class:`OutboundCall` at fixed points of their attempt loop
(fault injected, attempt started, attempt ended, call finished). It keeps what the metrics
need (start time, the endpoint and verified identity of the latest attempt, the metadata the
destination answered with, injected faults) and records the call once, when it finishes,
as ``reporter="source"``, with Envoy's response flags from :mod:`meshware.telemetry.flags`;
the same flags go on the CLIENT span of a sampled call (:class:`~meshware.telemetry.spans.ClientCall`).
"""

from __future__ import annotations

import time

import httpx

from meshware.config.discovery import Endpoint
from meshware.middleware.context import RequestContext
from meshware.routing.table import RouteDecision
from meshware.telemetry.access_log import AccessLog, Direction, RequestLine
from meshware.telemetry.cel import TagValue
from meshware.telemetry.flags import fault_flag, response_flags
from meshware.telemetry.meters import OutboundMeter
from meshware.telemetry.overrides import evaluate
from meshware.telemetry.peers import Workload, parse_peer
from meshware.telemetry.spans import ClientCall, Headers, client_span
from meshware.telemetry.tracing import Tracer

__all__ = ["OutboundCall", "outbound_call", "record_unrouted"]


class OutboundCall:
    """See the module docstring. Not thread-safe: one call is driven by one task/thread."""

    __slots__ = (
        "_details",
        "_done",
        "_endpoint",
        "_faults",
        "_meter",
        "_peer",
        "_principal",
        "_request_bytes",
        "_service_host",
        "_span",
        "_start",
        "attempts",
    )

    def __init__(
        self,
        meter: OutboundMeter | None,
        span: ClientCall | None,
        service_host: str,
        request_bytes: int,
        details: OutboundDetails | None = None,
    ) -> None:
        self._start = time.perf_counter()
        self._details = details
        self._meter = meter
        self._span = span
        self._service_host = service_host
        self._request_bytes = request_bytes
        self._faults = ""
        self._endpoint: Endpoint | None = None
        self._principal: str | None = None
        self._peer: Workload | None = None
        self._done = False
        self.attempts = 0

    def fault(self, kind: str) -> None:
        """An injected fault: ``delay`` (Envoy's response flag DI) or ``abort`` (FI)."""
        flag = fault_flag(kind)
        self._faults = f"{self._faults},{flag}" if self._faults else flag
        if self._span is not None:
            self._span.fault(kind)

    def attempt(self, endpoint: Endpoint, principal: str | None, headers: Headers) -> Headers:
        """Start an attempt at ``endpoint`` (whose identity ``principal`` the TLS handshake
        verifies, None for plaintext): the headers to send for it."""
        self.attempts += 1
        self._endpoint = endpoint
        self._principal = principal
        self._peer = None
        span = self._span
        return span.attempt_headers(headers) if span is not None else headers

    def attempt_end(
        self,
        status: int | None = None,
        error: BaseException | None = None,
        peer: bytes | None = None,
    ) -> None:
        """End the current attempt; ``peer`` is the value of the destination's metadata
        header (:data:`~meshware.telemetry.peers.PEER_HEADER`), which the endpoint pool took
        out of the response so the application never sees it."""
        if peer is not None:
            self._peer = parse_peer(peer.decode("latin-1"))
        span = self._span
        if span is not None:
            endpoint = self._endpoint
            span.attempt_end(endpoint.address if endpoint is not None else "", status, error)

    def finish(
        self,
        status: int | None = None,
        error: BaseException | None = None,
        response_bytes: int = 0,
    ) -> None:
        """The logical call is over (answered with ``status``, or failed with ``error``);
        only the first call counts."""
        if self._done:
            return
        self._done = True
        failed = error is not None or (status is not None and status >= 500)
        flags = response_flags(self._faults, error, self.attempts, failed)
        meter = self._meter
        elapsed = time.perf_counter() - self._start
        answered = None if error is not None else status
        details = self._details
        line: RequestLine | None = None
        if details is not None:
            endpoint = self._endpoint
            line = details.line(
                answered,
                flags,
                elapsed,
                response_bytes,
                endpoint.address if endpoint is not None else None,
                self._principal,
            )
        if meter is not None:
            edge = meter.edge(self._service_host, self._endpoint, self._principal, self._peer)
            tags = details.tags if details is not None else ()
            meter.record(
                edge,
                answered,
                flags,
                elapsed,
                self._request_bytes,
                response_bytes,
                evaluate(tags, line.attributes()) if tags and line is not None else (),
            )
        if self._span is not None:
            self._span.finish(status, error, flags)
        if details is not None and details.direction is not None and line is not None:
            details.access.emit(details.direction, line)


class OutboundDetails:
    """What the access log line and the per-request metric tags of an outbound call need,
    kept only when outbound logging is on or such tags are configured."""

    __slots__ = ("access", "context", "decision", "direction", "request", "tags")

    def __init__(
        self,
        access: AccessLog,
        direction: Direction | None,
        tags: tuple[TagValue, ...],
        request: httpx.Request,
        context: RequestContext | None,
        decision: RouteDecision,
    ) -> None:
        self.access = access
        self.direction = direction
        self.tags = tags
        self.request = request
        self.context = context
        self.decision = decision

    def line(
        self,
        status: int | None,
        flags: str,
        elapsed: float,
        response_bytes: int,
        upstream: str | None,
        principal: str | None,
    ) -> RequestLine:
        request, decision, context = self.request, self.decision, self.context
        headers = {k.lower(): v for k, v in request.headers.items()}
        url = request.url
        port = url.port or decision.port or (443 if url.scheme == "https" else 80)
        values = {
            "start_time": time.time() - elapsed,
            "method": request.method,
            "path": url.raw_path.decode("ascii", "replace"),
            "protocol": "HTTP/1.1",
            "response_code": status or 0,
            "response_flags": flags,
            "bytes_received": _request_bytes(request),
            "bytes_sent": response_bytes,
            "duration": int(elapsed * 1000),
            "user_agent": headers.get("user-agent"),
            "request_id": headers.get("x-request-id")
            or (context.request_id if context is not None else None),
            "authority": url.netloc.decode("ascii", "replace"),
            "upstream_host": upstream,
            "upstream_cluster": f"outbound|{port}|{decision.subset}|{decision.service_host}",
            "route_name": decision.route_name,
            "direction": "outbound",
            "trace_id": context.trace_id if context is not None else None,
            "upstream_principal": principal,
        }
        return RequestLine(
            values,
            headers,
            scheme=url.scheme,
            sampled=bool(context.flags & 1) if context is not None else False,
        )


def _request_bytes(request: httpx.Request) -> int:
    """The declared body length (the body of an outbound request is never buffered here)."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return len(request.content)
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else 0


def outbound_call(
    meter: OutboundMeter | None,
    tracer: Tracer | None,
    context: RequestContext | None,
    request: httpx.Request,
    decision: RouteDecision,
    access: AccessLog | None = None,
) -> OutboundCall:
    """The telemetry of a call routed by ``decision`` (a span only if it is sampled, an
    access log line only if outbound logging is on)."""
    direction = access.policy.outbound if access is not None else None
    tags = meter.tags if meter is not None else ()
    return OutboundCall(
        meter,
        client_span(tracer, context, request, decision),
        decision.service_host,
        _request_bytes(request) if meter is not None else 0,
        OutboundDetails(access, direction, tags, request, context, decision)
        if access is not None and (direction is not None or tags)
        else None,
    )


def record_unrouted(
    meter: OutboundMeter | None, service_host: str, request: httpx.Request, error: BaseException
) -> None:
    """Count a call that never got a route (``NR``) against ``service_host``."""
    if meter is None:
        return
    call = OutboundCall(meter, None, service_host, _request_bytes(request))
    call.finish(error=error)
