"""The request context: what an inbound request hands to every outbound call it makes.

The middleware reads the W3C ``traceparent``/``tracestate``/``baggage``, ``x-request-id``, the
caller's deadline and the sticky-cohort keys into a :class:`RequestContext` kept in a context
variable. Context variables follow the request into tasks it spawns (``asyncio.gather``,
``create_task`` copy the context) and stay with the thread of a WSGI request, so the mesh
client finds it without the application passing anything: no header forwarding in app code.

Parsing is strict and never raises: a malformed header is ignored as the W3C specifications
say (a bad ``traceparent`` starts a new trace; a bad ``tracestate`` or ``baggage`` is dropped).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
REQUEST_ID = "x-request-id"
DEADLINE = "x-meshware-deadline-ms"
"""Milliseconds the caller still allows, relative (like gRPC's ``grpc-timeout``), so clocks
need not agree between hosts."""

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACESTATE_KEY = re.compile(
    r"^([a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$"
)
_TRACESTATE_VALUE = re.compile(
    r"^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$"
)
_BAGGAGE_KEY = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAGGAGE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_TRACESTATE_MEMBERS = 32
MAX_BAGGAGE_MEMBERS = 180
MAX_BAGGAGE_BYTES = 8192


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A W3C trace context: trace id, the id of the span that made the call, flags."""

    trace_id: str
    parent_id: str
    flags: int = 0

    def format(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A valid ``traceparent``, or None (then the request starts a new trace).

    Version ``ff`` and all-zero ids are invalid; a future version is read for its first four
    fields only if they are well formed; version ``00`` allows nothing after the flags.
    """
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version == "00" and rest:
        return None
    if rest and not rest.startswith("-"):
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def parse_tracestate(value: str | None) -> str:
    """The ``tracestate`` to propagate: ``""`` when absent or invalid in any member."""
    if not value:
        return ""
    members = [m.strip() for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return ""
    seen: set[str] = set()
    for member in members:
        key, sep, val = member.partition("=")
        if (
            not sep
            or not _TRACESTATE_KEY.match(key)
            or not _TRACESTATE_VALUE.match(val)
            or key in seen
        ):
            return ""
        seen.add(key)
    return ",".join(members)


def parse_baggage(value: str | None) -> str:
    """The ``baggage`` to propagate: ``""`` when absent, too large or malformed."""
    if not value or len(value.encode("utf-8", "replace")) > MAX_BAGGAGE_BYTES:
        return ""
    members = [m.strip() for m in value.split(",")]
    if len(members) > MAX_BAGGAGE_MEMBERS:
        return ""
    for member in members:
        pair, *properties = member.split(";")
        key, sep, val = pair.partition("=")
        if not sep or not _BAGGAGE_KEY.match(key.strip()) or not _BAGGAGE_VALUE.match(val.strip()):
            return ""
        for prop in properties:
            pkey = prop.partition("=")[0].strip()
            if not _BAGGAGE_KEY.match(pkey):
                return ""
    return ",".join(members)


def parse_deadline(value: str | None, now: float) -> float | None:
    """An absolute monotonic deadline from ``x-meshware-deadline-ms``, or None if invalid."""
    if not value or not value.isdigit() or len(value) > 12:
        return None
    return now + int(value) / 1000.0


def new_id(nbytes: int) -> str:
    """A random non-zero lower-hex id (16 bytes for traces, 8 for spans)."""
    while True:
        value = os.urandom(nbytes).hex()
        if value.strip("0"):
            return value


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What one inbound request carries to the outbound calls made while handling it."""

    trace_id: str
    span_id: str
    """This hop's span: outbound calls name it as their parent."""
    flags: int = 0
    tracestate: str = ""
    baggage: str = ""
    request_id: str = ""
    deadline: float | None = None
    """Monotonic time after which the caller no longer waits."""
    forwarded: Mapping[str, str] = field(default_factory=dict)
    """Sticky-cohort headers (lower-case name → value) to pass on unchanged."""
    parent_id: str = ""
    """The caller's span (from its ``traceparent``), or ``""`` when this hop started the trace."""

    @property
    def sampled(self) -> bool:
        """The trace is recorded (the ``sampled`` flag this hop propagates)."""
        return bool(self.flags & 1)

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def outbound_headers(self, now: float) -> list[tuple[bytes, bytes]]:
        """Headers an outbound call carries (the caller's own values win over these)."""
        headers = [(b"traceparent", self.traceparent().encode())]
        if self.tracestate:
            headers.append((b"tracestate", self.tracestate.encode()))
        if self.baggage:
            headers.append((b"baggage", self.baggage.encode("utf-8", "replace")))
        if self.request_id:
            headers.append((b"x-request-id", self.request_id.encode()))
        if self.deadline is not None:
            left = max(0, int((self.deadline - now) * 1000))
            headers.append((DEADLINE.encode(), str(left).encode()))
        for name, value in self.forwarded.items():
            headers.append((name.encode("latin-1"), value.encode("latin-1", "replace")))
        return headers


current_context: ContextVar[RequestContext | None] = ContextVar("meshware_request", default=None)


def current() -> RequestContext | None:
    """The context of the request being handled in this task or thread, if any."""
    return current_context.get()


def _never(_trace_id: str) -> bool:
    return False


def from_headers(
    get: Mapping[str, str],
    *,
    sticky_headers: frozenset[str] = frozenset(),
    now: float | None = None,
    sample: Callable[[str], bool] = _never,
) -> RequestContext:
    """Build the context of an inbound request from its (lower-case keyed) headers.

    A request that continues a trace keeps the caller's flags (parent-based sampling); one
    that starts a trace is sampled if ``sample(trace_id)`` says so.
    """
    parent = parse_traceparent(get.get(TRACEPARENT))
    request_id = get.get(REQUEST_ID, "")
    if not _REQUEST_ID.match(request_id):
        request_id = new_id(16)
    forwarded = {name: get[name] for name in sticky_headers if get.get(name)}
    if parent is None:
        trace_id = new_id(16)
        return RequestContext(
            trace_id=trace_id,
            span_id=new_id(8),
            flags=1 if sample(trace_id) else 0,
            request_id=request_id,
            baggage=parse_baggage(get.get(BAGGAGE)),
            deadline=parse_deadline(get.get(DEADLINE), time.monotonic() if now is None else now),
            forwarded=forwarded,
        )
    return RequestContext(
        trace_id=parent.trace_id,
        span_id=new_id(8),
        flags=parent.flags,
        tracestate=parse_tracestate(get.get(TRACESTATE)),
        baggage=parse_baggage(get.get(BAGGAGE)),
        request_id=request_id,
        deadline=parse_deadline(get.get(DEADLINE), time.monotonic() if now is None else now),
        forwarded=forwarded,
        parent_id=parent.parent_id,
    )
