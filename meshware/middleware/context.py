"""The request context: what an inbound request hands to every outbound call it makes.

The middleware reads the W3C ``traceparent``/``tracestate``/``baggage``, ``x-request-id``, the
caller's deadline and the sticky-cohort keys into a :class:`RequestContext` kept in a context
variable. Context variables follow the request into tasks it spawns (``asyncio.gather``,
``create_task`` copy the context) and stay with the thread of a WSGI request, so the mesh
client finds it without the application passing anything: no header forwarding in app code.

Parsing is strict and never raises: a malformed header is ignored as the W3C specifications
say (a bad ``traceparent`` starts a new trace; a bad ``tracestate`` or ``baggage`` is dropped).

``traceparent``/``tracestate`` follow W3C Trace Context Level 1 (REC 2021-11-23) and Level 2
(CRD 2024-03-28); where the two differ, Level 2 wins (it supersedes Level 1):

* trace-flags: bit 0 is *sampled*, bit 1 Level 2's *random-trace-id*; this hop sets the random
  flag on the traces it starts (their ids are ``os.urandom``), keeps the caller's on the traces
  it continues, and zeroes every other bit ("Vendors MUST set those to zero", Other Flags);
* ``tracestate`` keys follow Level 2's grammar, ``(lcalpha / DIGIT) 0*255(keychar)`` with ``@``
  a keychar, which accepts every Level 1 key (simple or ``tenant@system``) and more;
* a ``tracestate`` longer than :data:`MAX_TRACESTATE_CHARS` is truncated the way §3.3.1.5
  says: whole entries, those over 128 characters first, then from the end.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
REQUEST_ID = "x-request-id"
DEADLINE = "x-meshware-deadline-ms"
"""Milliseconds the caller still allows, relative (like gRPC's ``grpc-timeout``), so clocks
need not agree between hosts."""

SAMPLED = 0x01
"""trace-flags bit 0, *sampled*: the caller may have recorded trace data (§3.2.2.5.1)."""
RANDOM_TRACE_ID = 0x02
"""trace-flags bit 1, Level 2's *random-trace-id*: the right-most 7 bytes of the trace id are
random (§3.2.2.5.2 of Level 2)."""
KNOWN_FLAGS = SAMPLED | RANDOM_TRACE_ID
"""The flags this hop propagates; every other bit is sent as zero."""

# version "-" trace-id "-" parent-id "-" trace-flags, then (for a version above 00 only) "-" and
# fields this version cannot know. No comma anywhere: a comma means the header came as several
# fields (RFC 9110 §5.3 joins them with commas), and traceparent is a single-valued field.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^,]*)?")
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_FLAGS = {f"{flags:02x}": flags & KNOWN_FLAGS for flags in range(256)}
"""The flags this hop keeps of each two-hex-digit trace-flags field (a lookup costs less than
``int(field, 16)``)."""
_HEX_FLAGS = tuple(f"{flags:02x}" for flags in range(KNOWN_FLAGS + 1))
"""The trace-flags field of the flags this hop propagates (indexing costs less than
formatting with ``:02x``)."""
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16
_OWS = " \t"
"""RFC 9110's optional whitespace: space and horizontal tab, nothing else."""
_TRACESTATE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_BAGGAGE_KEY = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAGGAGE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_CHARS = 512
"""The longest ``tracestate`` propagated (entries plus the commas between them): the 512
characters the specification asks every vendor to carry, so a hop's header cost stays bounded
(up to 32 entries of 513 characters each would otherwise be legal). Longer ones are truncated,
never dropped whole."""
_TRACESTATE_LARGE_ENTRY = 128
"""Entries longer than this go first when ``tracestate`` must be truncated (§3.3.1.5)."""
MAX_BAGGAGE_MEMBERS = 180
MAX_BAGGAGE_BYTES = 8192


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A W3C trace context: trace id, the id of the span that made the call, flags."""

    trace_id: str
    parent_id: str
    flags: int = 0
    """trace-flags: :data:`SAMPLED` and :data:`RANDOM_TRACE_ID`; other bits are always zero."""

    def format(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{_HEX_FLAGS[self.flags & KNOWN_FLAGS]}"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    @property
    def random(self) -> bool:
        """The caller's trace id has (at least) 7 random right-most bytes (Level 2)."""
        return bool(self.flags & RANDOM_TRACE_ID)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A valid ``traceparent``, or None (then the request starts a new trace).

    Lower-case hex only; version ``ff`` and all-zero ids are invalid; version ``00`` allows
    nothing after the flags; a higher version is read for its first four fields when what
    follows the flags starts with ``-`` (it is then propagated as version ``00``). Surrounding
    spaces and tabs are ignored; a value holding a comma (the header sent more than once) is
    invalid. Flags other than sampled and random-trace-id are dropped.
    """
    parsed = _traceparent(value)
    return TraceParent(*parsed) if parsed is not None else None


def _traceparent(value: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent id, flags) of a valid ``traceparent`` (see :func:`parse_traceparent`),
    without building an object: the middleware calls this on every request."""
    if not value:
        return None
    if len(value) == 55 and _TRACEPARENT_00.fullmatch(value) is not None:
        # the common case, version 00 and nothing around it: no groups to build
        trace_id, parent_id = value[3:35], value[36:52]
        if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
            return None
        return trace_id, parent_id, _FLAGS[value[53:]]
    match = _TRACEPARENT.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "00":
        if rest is not None:
            return None
    elif version == "ff":
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return trace_id, parent_id, int(flags, 16) & KNOWN_FLAGS


@lru_cache(maxsize=512)
def parse_tracestate(value: str | None) -> str:
    """The ``tracestate`` to propagate: ``""`` when absent, empty or invalid (memoised by the
    raw value, like :func:`parse_baggage`).

    Empty and whitespace-only list members are skipped; an invalid key or value, a key that
    appears twice or more than 32 members make the whole header invalid (it is dropped). A
    valid header is passed on with the optional whitespace removed, truncated to
    :data:`MAX_TRACESTATE_CHARS` as :func:`truncate_tracestate` does.
    """
    if not value:
        return ""
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(_OWS)
        if not member:
            continue
        key, sep, val = member.partition("=")
        if (
            not sep
            or key in keys
            or _TRACESTATE_KEY.fullmatch(key) is None
            or _TRACESTATE_VALUE.fullmatch(val) is None
        ):
            return ""
        keys.add(key)
        members.append(member)
        if len(members) > MAX_TRACESTATE_MEMBERS:
            return ""
    header = ",".join(members)
    return header if len(header) <= MAX_TRACESTATE_CHARS else truncate_tracestate(members)


def truncate_tracestate(members: list[str], limit: int = MAX_TRACESTATE_CHARS) -> str:
    """``members`` joined with commas, whole entries removed until it fits in ``limit``.

    As §3.3.1.5 says: entries longer than 128 characters go first (the last of them first),
    then entries from the end; no more is removed than needed to fit.
    """
    kept = list(members)
    size = sum(map(len, kept)) + len(kept) - 1
    for index in range(len(kept) - 1, -1, -1):
        if size <= limit:
            break
        if len(kept[index]) > _TRACESTATE_LARGE_ENTRY:
            size -= len(kept.pop(index)) + 1
    while size > limit and kept:
        size -= len(kept.pop()) + 1
    return ",".join(kept)


@lru_cache(maxsize=512)
def parse_baggage(value: str | None) -> str:
    """The ``baggage`` to propagate: ``""`` when absent, too large or malformed.

    Memoised by the raw value: a caller sends the same baggage on many requests.

    Empty list elements (as joining repeated ``baggage`` fields can leave) are ignored, as
    RFC 9110 §5.6.1 asks of list-based fields.
    """
    if not value or len(value.encode("utf-8", "replace")) > MAX_BAGGAGE_BYTES:
        return ""
    members = [m for m in (m.strip() for m in value.split(",")) if m]
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


def _span_id() -> str:
    """A random non-zero 64-bit id in lower hex.

    Drawn from :mod:`random` (as the OpenTelemetry SDK's ``RandomIdGenerator`` does): ids
    must be unique and unpredictable enough to sample on, not secret, and an ``os.urandom``
    system call per id costs more than everything else the middleware does. The module's
    generator is reseeded in every forked worker by Python itself. An all-zero id (one chance
    in 2**64) is redrawn.
    """
    return "%016x" % (_bits(64) or _bits(64) or 1)


def _trace_id() -> str:
    """A random non-zero 128-bit id in lower hex (see :func:`_span_id`)."""
    return "%032x" % (_bits(128) or _bits(128) or 1)


@dataclass(slots=True)
class RequestContext:
    """What one inbound request carries to the outbound calls made while handling it.

    Treat it as immutable (it is shared by every task the request spawns); it is not a frozen
    dataclass only because freezing makes its construction, once per request, 3x slower."""

    trace_id: str
    span_id: str
    """This hop's span: outbound calls name it as their parent."""
    flags: int = 0
    """trace-flags this hop propagates: bit 0 (:data:`SAMPLED`) is the sampling decision, bit 1
    (:data:`RANDOM_TRACE_ID`) Level 2's random-trace-id flag; mask them (``flags & SAMPLED``)."""
    tracestate: str = ""
    baggage: str = ""
    request_id: str = ""
    deadline: float | None = None
    """Monotonic time after which the caller no longer waits."""
    forwarded: Mapping[str, str] = field(default_factory=dict)
    """Sticky-cohort headers (lower-case name → value) to pass on unchanged."""
    parent_id: str = ""
    """The caller's span (from its ``traceparent``), or ``""`` when this hop started the trace."""
    peer: str | None = None
    """The caller's SPIFFE ID, verified by mutual TLS (None for plaintext)."""

    @property
    def sampled(self) -> bool:
        """The trace is recorded (the ``sampled`` flag this hop propagates)."""
        return bool(self.flags & SAMPLED)

    @property
    def random(self) -> bool:
        """The trace id's right-most 7 bytes are random (Level 2's ``random-trace-id`` flag)."""
        return bool(self.flags & RANDOM_TRACE_ID)

    def traceparent(self) -> str:
        """The ``traceparent`` of outbound calls: version 00, this hop's span as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{_HEX_FLAGS[self.flags & KNOWN_FLAGS]}"

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


_NONE: Mapping[str, str] = MappingProxyType({})
_bits = random.getrandbits


def _never(_trace_id: str) -> bool:
    return False


def from_headers(
    get: Mapping[str, str],
    *,
    sticky_headers: frozenset[str] = frozenset(),
    now: float | None = None,
    sample: Callable[[str], bool] = _never,
    peer: str | None = None,
) -> RequestContext:
    """Build the context of an inbound request from its (lower-case keyed) headers.

    A request that continues a trace keeps the caller's sampled and random-trace-id flags
    (parent-based sampling) and its ``tracestate``. One that starts a trace (no valid
    ``traceparent``) gets a random trace id with the random-trace-id flag set, is sampled if
    ``sample(trace_id)`` says so, and drops any ``tracestate`` without reading it. Repeated
    header fields must arrive joined with commas, in order (as WSGI servers do).
    """
    parent = _traceparent(get.get(TRACEPARENT))
    sent_id = get.get(REQUEST_ID)
    # %-formatting: a third cheaper than an f-string with a format spec, on every request
    request_id = (
        sent_id if sent_id is not None and _REQUEST_ID.match(sent_id) else "%032x" % _bits(128)  # noqa: UP031
    )
    forwarded = (
        {name: get[name] for name in sticky_headers if get.get(name)} if sticky_headers else _NONE
    )
    baggage = get.get(BAGGAGE)
    deadline = get.get(DEADLINE)
    if parent is None:
        trace_id = _trace_id()
        return RequestContext(
            trace_id,
            _span_id(),
            RANDOM_TRACE_ID | (SAMPLED if sample(trace_id) else 0),
            "",
            parse_baggage(baggage) if baggage else "",
            request_id,
            parse_deadline(deadline, time.monotonic() if now is None else now)
            if deadline
            else None,
            forwarded,
            "",
            peer,
        )
    tracestate = get.get(TRACESTATE)
    return RequestContext(
        parent[0],
        _span_id(),
        parent[2],
        parse_tracestate(tracestate) if tracestate else "",
        parse_baggage(baggage) if baggage else "",
        request_id,
        parse_deadline(deadline, time.monotonic() if now is None else now) if deadline else None,
        forwarded,
        parent[1],
        peer,
    )
