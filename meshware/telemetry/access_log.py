"""Access logs: one JSON line per request, switched on and filtered by ``Telemetry``.

**Policy.** As in Istio, access logging is off until a ``Telemetry`` resource turns it on,
and the most specific resource with an ``accessLogging`` section wins: one in the workload's
namespace whose ``selector`` matches it, then one in its namespace without a selector, then
the mesh-wide one in the root namespace. Within it, the entries whose ``match.mode`` covers a
direction (``SERVER`` = inbound requests, ``CLIENT`` = the calls this workload makes) decide
for that direction: any of them ``disabled: true`` turns it off; otherwise a request is
logged when an entry has no ``filter`` or its CEL ``filter.expression`` is true
(:mod:`meshware.telemetry.cel`). Providers are not distinguished: every line goes to the
instance's one sink (stdout, or ``MESHWARE_ACCESS_LOG``).

**Lines.** The fields of Envoy's default access log format, as JSON, plus the trace id, the
verified source principal and the AUDIT mark of AuthorizationPolicy. Lines are written into
a buffered stream under a lock and flushed by the mesh's background loop about once a second,
so the request path never waits for the disk; a failing sink drops lines (counted), never the
request.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.telemetry import AccessLogging
from meshware.telemetry.cel import Predicate, compile_filter
from meshware.telemetry.policy import winning_telemetry

__all__ = [
    "AccessLog",
    "AccessLogPolicy",
    "AccessLogSink",
    "Direction",
    "RequestLine",
    "access_log_policy",
    "filter_attributes",
    "format_line",
    "inbound_values",
]

log = logging.getLogger("meshware.telemetry")

FIELDS = (
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "downstream_remote_address",
    "route_name",
    "direction",
    "trace_id",
    "source_principal",
    "upstream_principal",
    "audit",
)
"""Every line carries these keys, in this order (``null`` when a value does not apply)."""


@dataclass(frozen=True, slots=True)
class Direction:
    """Access logging for one direction: on, with the filters of the entries that apply."""

    filters: tuple[Predicate, ...] = ()
    """Log when any is true; empty: log every request."""

    def wants(self, attributes: Mapping[str, Any] | None) -> bool:
        if not self.filters:
            return True
        if attributes is None:
            return False
        return any(check(attributes) for check in self.filters)


@dataclass(frozen=True, slots=True)
class AccessLogPolicy:
    """What this workload logs: ``inbound``/``outbound`` are None when off."""

    inbound: Direction | None = None
    outbound: Direction | None = None


OFF = AccessLogPolicy()


def _direction(entries: tuple[AccessLogging, ...], mode: str) -> Direction | None:
    applicable = [e for e in entries if e.mode in ("CLIENT_AND_SERVER", mode)]
    if not applicable or any(e.disabled for e in applicable):
        return None
    filters = []
    for entry in applicable:
        if entry.filter_expression is None:
            return Direction()  # one entry logs everything
        filters.append(compile_filter(entry.filter_expression))
    return Direction(tuple(filters))


def access_log_policy(
    config: MeshConfig, namespace: str, labels: Mapping[str, str]
) -> AccessLogPolicy:
    """The access logging this workload applies (see the module docstring)."""
    chosen = winning_telemetry(config, namespace, labels, lambda r: bool(r.spec.access_logging))
    if chosen is None:
        return OFF
    entries = chosen.spec.access_logging
    return AccessLogPolicy(_direction(entries, "SERVER"), _direction(entries, "CLIENT"))


def filter_attributes(
    *,
    method: str,
    path: str,
    host: str,
    scheme: str,
    protocol: str,
    headers: Mapping[str, str],
    code: int,
    flags: str,
    request_size: int,
    response_size: int,
    duration_ms: float,
    source_address: str,
    source_principal: str | None,
    upstream_address: str | None,
    sampled: bool,
    direction: str,
) -> dict[str, Any]:
    """The attributes a filter expression can read (Envoy's names where they exist)."""
    return {
        "request": {
            "method": method,
            "path": path,
            "url_path": path.partition("?")[0],
            "host": host,
            "scheme": scheme,
            "protocol": protocol,
            "headers": headers,
            "id": headers.get("x-request-id", ""),
            "size": request_size,
            "useragent": headers.get("user-agent", ""),
        },
        "response": {"code": code, "flags": flags, "size": response_size},
        "source": {"address": source_address, "principal": source_principal or ""},
        "connection": {"mtls": source_principal is not None},
        "upstream": {"address": upstream_address or ""},
        "meshware": {
            "direction": direction,
            "duration_ms": duration_ms,
            "sampled": sampled,
            "random": random.random(),
        },
    }


def _iso(timestamp: float) -> str:
    millis = int(timestamp * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{millis:03d}Z"


def format_line(values: Mapping[str, Any]) -> str:
    """One JSON access log line (no newline); ``start_time`` is an epoch float in ``values``."""
    entry: dict[str, Any] = {name: values.get(name) for name in FIELDS}
    start = entry["start_time"]
    if isinstance(start, int | float):
        entry["start_time"] = _iso(float(start))
    if not entry["response_flags"]:
        entry["response_flags"] = "-"
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


class AccessLogSink:
    """Where this instance's access log lines go: a stream written under a lock, flushed by
    :meth:`flush` (the mesh calls it about once a second and when it stops)."""

    def __init__(self, stream: IO[str] | None = None, *, path: str | None = None) -> None:
        self._path = path
        self._stream = stream
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self._warned = False

    def _open(self) -> IO[str]:
        if self._stream is None:
            if self._path:
                self._stream = open(self._path, "a", encoding="utf-8", buffering=65536)  # noqa: SIM115
            else:
                self._stream = sys.stdout
        return self._stream

    def write(self, values: Mapping[str, Any]) -> None:
        line = format_line(values) + "\n"
        with self._lock:
            try:
                self._open().write(line)
                self.written += 1
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self.dropped += 1
                self._warn(exc)

    def flush(self) -> None:
        with self._lock:
            if self._stream is None:
                return
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._warn(exc)

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._path and self._stream is not None:
                self._stream.close()
                self._stream = None

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("access log lines are being dropped: %s", exc)


class AccessLog:
    """An instance's access logging: the policy of the applied config (swapped on every
    change) and its sink. The request path checks ``policy.inbound``/``policy.outbound``
    (one attribute read) and only builds a line when the direction is on."""

    __slots__ = ("policy", "sink")

    def __init__(self, sink: AccessLogSink) -> None:
        self.policy = OFF
        self.sink = sink

    def emit(self, direction: Direction, line: RequestLine) -> None:
        """Write ``line`` if ``direction``'s filters let it through."""
        if direction.filters and not direction.wants(line.attributes()):
            return
        self.sink.write(line.values)


class RequestLine:
    """One request as the access log and per-request metric tags see it: the line's
    ``values`` (see :data:`FIELDS`), the request headers (names lower-case) and, built on
    first use, the CEL attributes (:func:`filter_attributes`)."""

    __slots__ = ("_attributes", "headers", "sampled", "scheme", "values")

    def __init__(
        self,
        values: dict[str, Any],
        headers: Mapping[str, str],
        *,
        scheme: str = "http",
        sampled: bool = False,
    ) -> None:
        self.values = values
        self.headers = headers
        self.scheme = scheme
        self.sampled = sampled
        self._attributes: dict[str, Any] | None = None

    def attributes(self) -> dict[str, Any]:
        if self._attributes is None:
            values = self.values
            self._attributes = filter_attributes(
                method=values.get("method") or "",
                path=values.get("path") or "",
                host=values.get("authority") or "",
                scheme=self.scheme,
                protocol=values.get("protocol") or "",
                headers=self.headers,
                code=int(values.get("response_code") or 0),
                flags=values.get("response_flags") or "",
                request_size=int(values.get("bytes_received") or 0),
                response_size=int(values.get("bytes_sent") or 0),
                duration_ms=float(values.get("duration") or 0),
                source_address=values.get("downstream_remote_address") or "",
                source_principal=values.get("source_principal"),
                upstream_address=values.get("upstream_host"),
                sampled=self.sampled,
                direction=values.get("direction") or "",
            )
        return self._attributes


def inbound_values(
    *,
    elapsed: float,
    method: str,
    path: str,
    protocol: str,
    status: int | None,
    received: int,
    sent: int,
    headers: Mapping[str, str],
    request_id: str,
    trace_id: str,
    principal: str | None,
    client: str | None,
    server: str | None,
    audit: bool,
) -> dict[str, Any]:
    """The line of an inbound request (ASGI and WSGI alike), Istio's names for the inbound
    side: ``upstream_cluster`` ``inbound|PORT||``, ``upstream_host`` the app's own address."""
    port = server.rpartition(":")[2] if server else ""
    return {
        "start_time": time.time() - elapsed,
        "method": method,
        "path": path,
        "protocol": protocol,
        "response_code": status or 0,
        "response_flags": "" if status is not None else "DC",
        "bytes_received": received,
        "bytes_sent": sent,
        "duration": int(elapsed * 1000),
        "x_forwarded_for": headers.get("x-forwarded-for"),
        "user_agent": headers.get("user-agent"),
        "request_id": request_id,
        "authority": headers.get("host"),
        "upstream_host": server,
        "upstream_cluster": f"inbound|{port}||" if port else None,
        "downstream_remote_address": client,
        "route_name": "default",
        "direction": "inbound",
        "trace_id": trace_id,
        "source_principal": principal,
        "audit": audit,
    }
