"""W3C Trace Context, ``traceparent``: every rule of the header's section, Level 1 and Level 2.

Level 1 is the Recommendation of 2021-11-23 (https://www.w3.org/TR/trace-context/), Level 2 the
Candidate Recommendation Draft of 2024-03-28 (https://www.w3.org/TR/trace-context-2/).
Section numbers are Level 1's; Level 2 keeps them for ``traceparent`` except that its new
"Random Trace ID Flag" is §3.2.2.5.2 and "Other Flags" moved to §3.2.2.5.3. A quote found in
one level only says so. The cases the W3C test harness (w3c/trace-context ``test/test.py``)
sends are among these.

The parsers are checked directly, then through real servers: a request goes to a middle hop,
a Starlette app behind ``MeshMiddleware`` or a Flask app behind ``MeshWSGIMiddleware``, that
calls a leaf through ``mesh.async_client()`` / ``mesh.client()``; the leaf (Flask, itself
behind the middleware) echoes the ``traceparent``/``tracestate``/``baggage`` it received,
which is what a downstream service gets from the mesh client. ``tests/middleware/
test_w3c_tracestate.py`` uses the same servers.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshware import Mesh, MeshMiddleware, MeshWSGIMiddleware, current_request
from meshware.embedded_redis import RedisServer
from meshware.middleware import context as context_module
from meshware.middleware.context import (
    KNOWN_FLAGS,
    RANDOM_TRACE_ID,
    SAMPLED,
    RequestContext,
    TraceParent,
    from_headers,
    parse_traceparent,
)
from tests.middleware.test_inbound import ratings_app, serve_wsgi
from tests.servers import free_port, serve_asgi
from tests.transport.conftest import wait_for_endpoints

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
HEX = re.compile(r"[0-9a-f]+")


def tp(version: str = "00", trace: str = TRACE, parent: str = PARENT, flags: str = "01") -> str:
    return f"{version}-{trace}-{parent}-{flags}"


# -- the cases --------------------------------------------------------------------------------

INVALID = [
    # §3.2.2.1 version: "Version `ff` is invalid."
    pytest.param(tp("ff"), id="version-ff"),
    # §3.2.2.1: "version = 2HEXDIGLC"; §3.2.4: "When the version prefix cannot be parsed (it's
    # not 2 hex characters followed by a dash (-)), the implementation should restart the trace."
    pytest.param(tp("0A"), id="version-upper-case"),
    pytest.param(tp(".0"), id="version-illegal-char-first"),
    pytest.param(tp("0."), id="version-illegal-char-last"),
    pytest.param(tp("0"), id="version-too-short"),
    pytest.param(tp("000"), id="version-too-long-3"),
    pytest.param(tp("0000"), id="version-too-long-4"),
    pytest.param("00" + tp()[2:].replace("-", "_", 1), id="version-not-followed-by-dash"),
    # §3.2.2.3 trace-id: "All bytes as zero (00000000000000000000000000000000) is considered an
    # invalid value." / "If the trace-id value is invalid (for example if it contains
    # non-allowed characters or all zeros), vendors MUST ignore the traceparent."
    pytest.param(tp(trace="0" * 32), id="trace-id-all-zero"),
    pytest.param(tp(trace=TRACE.upper()), id="trace-id-upper-case"),
    pytest.param(tp(trace="." + TRACE[1:]), id="trace-id-illegal-char-first"),
    pytest.param(tp(trace=TRACE[:-1] + "."), id="trace-id-illegal-char-last"),
    pytest.param(tp(trace=TRACE + "3"), id="trace-id-too-long"),
    pytest.param(tp(trace=TRACE[:-1]), id="trace-id-too-short"),
    # §3.2.2.4 parent-id: "All bytes as zero (0000000000000000) is considered an invalid
    # value." / "Vendors MUST ignore the traceparent when the parent-id is invalid (for
    # example, if it contains non-lowercase hex characters)."
    pytest.param(tp(parent="0" * 16), id="parent-id-all-zero"),
    pytest.param(tp(parent=PARENT.upper().replace("0", "A")), id="parent-id-upper-case"),
    pytest.param(tp(parent="." + PARENT[1:]), id="parent-id-illegal-char-first"),
    pytest.param(tp(parent=PARENT[:-1] + "."), id="parent-id-illegal-char-last"),
    pytest.param(tp(parent=PARENT + "7"), id="parent-id-too-long"),
    pytest.param(tp(parent=PARENT[:-1]), id="parent-id-too-short"),
    # §3.2.2.2: "trace-flags = 2HEXDIGLC"
    pytest.param(tp(flags="0B"), id="flags-upper-case"),
    pytest.param(tp(flags=".0"), id="flags-illegal-char-first"),
    pytest.param(tp(flags="0."), id="flags-illegal-char-last"),
    pytest.param(tp(flags="001"), id="flags-too-long"),
    pytest.param(tp(flags="1"), id="flags-too-short"),
    # §3.2.2: "The dash (-) character is used as a delimiter between fields."
    pytest.param(tp().replace("-", "_"), id="underscore-delimiters"),
    pytest.param(tp().replace("-", ""), id="no-delimiters"),
    pytest.param(tp().replace("-", "--", 1), id="double-dash"),
    pytest.param(f"00-{TRACE[:-1]}-{TRACE[-1]}{PARENT}-01", id="dash-misplaced"),
    # §3.2.2.2: "version-format = trace-id "-" parent-id "-" trace-flags" (version 00: nothing
    # may follow the flags; the harness's test_traceparent_version_0x00)
    pytest.param(tp() + ".", id="v00-trailing-char"),
    pytest.param(tp() + "-", id="v00-trailing-dash"),
    pytest.param(tp() + "-what-the-future-will-be-like", id="v00-extra-fields"),
    # §3.2.4, a higher version: "If the size of the header is shorter than 55 characters, the
    # vendor should not parse the header and should restart the trace."
    pytest.param(tp("cc", flags="1"), id="future-shorter-than-55"),
    # §3.2.4: "Vendors MUST check that the 2 characters are either at the end of the string or
    # followed by a dash." (Level 2 wording)
    pytest.param(tp("cc") + ".what-the-future-will-be-like", id="future-flags-then-no-dash"),
    pytest.param(tp("cc", flags="012"), id="future-flags-three-chars"),
    # §3.2.4: "Vendors MUST check that the 32 characters are hex" (and §4.3: "the vendor uses
    # the format defined in this specification (00) to parse trace-id and parent-id")
    pytest.param(tp("cc", trace="0" * 32), id="future-trace-id-all-zero"),
    pytest.param(tp("cc", trace=TRACE.upper()), id="future-trace-id-upper-case"),
    pytest.param(tp("cc", parent="0" * 16), id="future-parent-id-all-zero"),
    # Two traceparent fields, joined with a comma (RFC 9110 §5.3): traceparent is one value,
    # not a list (the harness's test_traceparent_duplicated expects a new trace).
    pytest.param(tp() + "," + tp(trace=TRACE[::-1]), id="duplicated"),
    pytest.param(tp("cc") + "-x," + tp(), id="duplicated-future"),
    # OWS (RFC 9110 §5.6.3) is spaces and tabs only.
    pytest.param(tp() + "\n", id="newline-is-not-ows"),
    pytest.param("\v" + tp(), id="vertical-tab-is-not-ows"),
    pytest.param("", id="empty"),
    pytest.param(" \t ", id="blank"),
    pytest.param("garbage", id="garbage"),
]

VALID = [
    # §3.2.3 examples: "Valid traceparent when caller sampled this request" / "... didn't".
    pytest.param(tp(flags="01"), SAMPLED, id="sampled"),
    pytest.param(tp(flags="00"), 0, id="not-sampled"),
    # Level 2 §3.2.2.5.2: "If the flag is set in the incoming traceparent header, it MUST also
    # be set in all outgoing traceparent headers which use the same trace-id." (and "unset" /
    # "MUST also be unset": the sampled and not-sampled cases above)
    pytest.param(tp(flags="02"), RANDOM_TRACE_ID, id="random"),
    pytest.param(tp(flags="03"), SAMPLED | RANDOM_TRACE_ID, id="random-sampled"),
    # §3.2.2.5 Other Flags: "The behavior of other flags, such as (00000100) is not defined and
    # is reserved for future use. Vendors MUST set those to zero." §3.2.2.5: "a flag 00000001
    # could be encoded as 01 in hex, or 09 in hex if present with the flag 00001000".
    pytest.param(tp(flags="04"), 0, id="other-flag-00000100"),
    pytest.param(tp(flags="09"), SAMPLED, id="sampled-with-00001000"),
    pytest.param(tp(flags="fe"), RANDOM_TRACE_ID, id="all-but-sampled"),
    pytest.param(tp(flags="ff"), SAMPLED | RANDOM_TRACE_ID, id="all-flags"),
    # §3.2.4: "If a higher version is detected, the implementation SHOULD try to parse it" ...
    # "If all three values were parsed successfully, the vendor should use them."
    pytest.param(tp("cc"), SAMPLED, id="future-version"),
    pytest.param(tp("01"), SAMPLED, id="future-version-01"),
    pytest.param(tp("cc") + "-what-the-future-will-be-like", SAMPLED, id="future-extra-fields"),
    pytest.param(tp("cc") + "-", SAMPLED, id="future-trailing-dash"),
    pytest.param(tp("fe", flags="00") + "-", 0, id="future-version-fe"),
    # §4.3: "Vendors will set all unparsed / unknown trace-flags to 0 on outgoing requests."
    pytest.param(tp("cc", flags="fd") + "-x", SAMPLED, id="future-unknown-flags"),
    # OWS around the value (the harness's test_traceparent_ows_handling)
    pytest.param(" " + tp(), SAMPLED, id="ows-leading-space"),
    pytest.param("\t" + tp(), SAMPLED, id="ows-leading-tab"),
    pytest.param(tp() + " ", SAMPLED, id="ows-trailing-space"),
    pytest.param(tp() + "\t", SAMPLED, id="ows-trailing-tab"),
    pytest.param("\t " + tp() + " \t", SAMPLED, id="ows-both-sides"),
]


def assert_new_id(value: str, length: int) -> None:
    assert len(value) == length and HEX.fullmatch(value) and value.strip("0"), value


# -- the parser -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", INVALID)
def test_invalid_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(("value", "flags"), VALID)
def test_valid_traceparent_is_read(value: str, flags: int) -> None:
    assert parse_traceparent(value) == TraceParent(TRACE, PARENT, flags)


def test_flags_are_a_bit_field() -> None:
    """§3.2.2.5: "As this is a bit field, you cannot interpret flags by decoding the hex value
    and looking at the resulting number." Bit 0 is sampled; Level 2 makes bit 1 random."""
    for hex_flags, sampled, random in [
        ("00", False, False),
        ("01", True, False),
        ("02", False, True),
    ]:
        parsed = parse_traceparent(tp(flags=hex_flags))
        assert parsed is not None and (parsed.sampled, parsed.random) == (sampled, random)
    parsed = parse_traceparent(tp(flags="0b"))  # 00001011: sampled, random and an unknown bit
    assert parsed is not None and parsed.sampled and parsed.random and parsed.flags == 0x03


def test_a_higher_version_is_sent_on_as_version_00() -> None:
    """§3.2.4: "Vendors MUST use these fields to construct the new traceparent field according
    to the highest version of the specification known to the implementation"; §3.4 "Downgrade
    the version"."""
    parsed = parse_traceparent(tp("cc", flags="ff") + "-what-the-future-will-be-like")
    assert parsed is not None and parsed.format() == tp("00", flags="03")


# -- the request context ----------------------------------------------------------------------


@pytest.fixture
def tracestate_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(value: str | None) -> str:
        raise AssertionError(f"tracestate parsed: {value!r}")

    monkeypatch.setattr(context_module, "parse_tracestate", fail)


@pytest.mark.usefixtures("tracestate_never_parsed")
@pytest.mark.parametrize("value", INVALID)
def test_an_invalid_traceparent_restarts_the_trace_and_drops_tracestate(value: str) -> None:
    """§3.2.2.3: "vendors MUST ignore the traceparent"; §3.3: "If the vendor failed to parse
    traceparent, it MUST NOT attempt to parse tracestate."; §4.3: "the vendor creates a new
    traceparent header and deletes tracestate"; §3.4 Restart trace: "Vendors SHOULD clean up
    tracestate collection on traceparent restart"."""
    context = from_headers({"traceparent": value, "tracestate": TRACESTATE})
    assert context.trace_id != TRACE and context.parent_id == "" and context.tracestate == ""
    assert_new_id(context.trace_id, 32)
    assert context.flags == RANDOM_TRACE_ID


@pytest.mark.usefixtures("tracestate_never_parsed")
def test_without_traceparent_a_random_trace_is_started() -> None:
    """§4.2: "the vendor creates a new trace-id and parent-id"; "If a tracestate header is
    received without an accompanying traceparent header, it is invalid and MUST be discarded."
    Level 2 §3.2.2.5.2: "When at least the right-most 7 bytes of the trace-id are randomly (or
    pseudo-randomly) generated, the random-trace-id flag SHOULD be set to 1.\""""
    seen: list[str] = []

    def sample(trace_id: str) -> bool:
        seen.append(trace_id)
        return True

    contexts = [from_headers({"tracestate": TRACESTATE}) for _ in range(200)]
    for context in contexts:
        assert_new_id(context.trace_id, 32)
        assert_new_id(context.span_id, 16)
        assert context.flags == RANDOM_TRACE_ID and context.random and not context.sampled
        assert context.tracestate == "" and context.parent_id == ""
        assert context.traceparent() == f"00-{context.trace_id}-{context.span_id}-02"
    assert len({c.trace_id[-14:] for c in contexts}) == len(contexts)  # random right-most 7 bytes
    sampled = from_headers({}, sample=sample)
    assert seen == [sampled.trace_id]  # the sampling decision is made on the new trace id
    assert sampled.flags == SAMPLED | RANDOM_TRACE_ID
    assert sampled.traceparent().endswith("-03")


@pytest.mark.parametrize(("value", "flags"), VALID)
def test_a_valid_traceparent_is_continued(value: str, flags: int) -> None:
    """§3.4 Update parent-id: "The value of the parent-id field can be set to the new value
    representing the ID of the current operation." §4.3: "The value of property parent-id
    MUST be set to a value representing the ID of the current operation." The caller's
    sampling decision is kept (§3.2.2.5.1: "it SHOULD respect the sampled flag value")."""
    context = from_headers({"traceparent": value, "tracestate": TRACESTATE}, sample=lambda _: True)
    assert (context.trace_id, context.parent_id, context.flags) == (TRACE, PARENT, flags)
    assert_new_id(context.span_id, 16)
    assert context.span_id != PARENT
    assert context.tracestate == TRACESTATE
    outbound = dict(context.outbound_headers(now=0.0))
    assert outbound[b"traceparent"].decode() == f"00-{TRACE}-{context.span_id}-{flags:02x}"
    assert outbound[b"tracestate"].decode() == TRACESTATE


def test_outbound_flags_never_carry_unknown_bits() -> None:
    """§3.2.2.5 Other Flags: "Vendors MUST set those to zero.\""""
    assert RequestContext(TRACE, PARENT, flags=0xFF).traceparent() == tp(flags="03")
    assert TraceParent(TRACE, PARENT, 0xFC).format() == tp(flags="00")
    assert KNOWN_FLAGS == SAMPLED | RANDOM_TRACE_ID == 0x03


def test_each_request_gets_its_own_span() -> None:
    """§3.4: the parent-id sent on is "the ID of the current operation": one per request."""
    spans = {from_headers({"traceparent": tp()}).span_id for _ in range(100)}
    assert len(spans) == 100 and PARENT not in spans


# -- end to end: real servers, the middleware and the mesh client ----------------------------


@dataclass(frozen=True)
class Hop:
    """What the middle hop made of a request, and what its downstream call carried."""

    trace_id: str
    span_id: str
    parent_id: str
    flags: int
    tracestate: str
    baggage: str
    leaf: dict[str, str]
    """The headers the leaf received from the middle hop's mesh client."""

    @property
    def leaf_traceparent(self) -> str:
        return self.leaf["traceparent"]

    @property
    def continued(self) -> str:
        """The traceparent the leaf must get when the hop continued the caller's trace."""
        return f"00-{TRACE}-{self.span_id}-{self.flags:02x}"


def _seen(leaf: dict[str, Any]) -> dict[str, Any]:
    context = current_request()
    assert context is not None
    return {
        "trace_id": context.trace_id,
        "span_id": context.span_id,
        "parent_id": context.parent_id,
        "flags": context.flags,
        "tracestate": context.tracestate,
        "baggage": context.baggage,
        "leaf": leaf["headers"],
    }


def asgi_hop(mesh: Mesh) -> Starlette:
    """Starlette behind MeshMiddleware, calling the leaf through ``mesh.async_client()``."""

    async def hop(request: Request) -> JSONResponse:
        async with mesh.async_client(timeout=10) as client:
            leaf = (await client.get("http://ratings/ratings/1")).json()
        return JSONResponse(_seen(leaf))

    app = Starlette(routes=[Route("/hop", hop)])
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def wsgi_hop(mesh: Mesh, exits: ExitStack) -> Flask:
    """Flask behind MeshWSGIMiddleware, calling the leaf through ``mesh.client()``."""
    app = Flask("w3c-wsgi")
    client = exits.enter_context(mesh.client(timeout=10))

    @app.get("/hop")
    def hop() -> Any:
        return jsonify(_seen(client.get("http://ratings/ratings/1").json()))

    app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
    return app


@pytest.fixture(scope="module", name="hops")
def hops_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Base URL of each middle hop, all calling one leaf (``ratings``), on one real Redis."""
    with ExitStack() as exits:
        redis = RedisServer(directory=tmp_path_factory.mktemp("redis"))
        redis.start()
        exits.callback(redis.close)
        state = tmp_path_factory.mktemp("state")

        def mesh(service: str, **kwargs: Any) -> Mesh:
            made = Mesh(
                service,
                "v1",
                redis_url=redis.url,
                state_dir=Path(state, service),
                heartbeat_interval=0.2,
                instance_ttl=2.0,
                resync_interval=0.5,
                discovery_interval=0.2,
                **kwargs,
            )
            exits.callback(made.stop)
            return made.start()

        leaf_port = free_port()
        leaf = mesh("ratings", address=f"127.0.0.1:{leaf_port}")
        serve_wsgi(ratings_app(leaf), leaf_port, exits)
        asgi = mesh("w3c-asgi")
        wsgi = mesh("w3c-wsgi")
        traced = mesh("w3c-traced", span_exporter=InMemorySpanExporter(), trace_sampling=100.0)
        wsgi_port = free_port()
        serve_wsgi(wsgi_hop(wsgi, exits), wsgi_port, exits)
        urls = {
            "asgi": exits.enter_context(serve_asgi(asgi_hop(asgi))),
            "wsgi": f"http://127.0.0.1:{wsgi_port}",
            "asgi-traced": exits.enter_context(serve_asgi(asgi_hop(traced))),
        }
        for caller in (asgi, wsgi, traced):
            wait_for_endpoints(caller, "ratings", 1)
        yield urls


@pytest.fixture(params=["asgi", "wsgi"], name="stack")
def stack_fixture(request: pytest.FixtureRequest, hops: dict[str, str]) -> str:
    """The middle hop of one stack: Starlette + MeshMiddleware or Flask + MeshWSGIMiddleware."""
    url: str = hops[request.param]
    return url


def call(url: str, headers: list[tuple[str, str]]) -> Hop:
    """GET the hop with these header fields, in this order (repeats sent as separate fields)."""
    response = httpx.get(f"{url}/hop", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return Hop(**response.json())


def call_raw(url: str, headers: list[tuple[str, str]]) -> Hop:
    """As :func:`call`, through http.client, which sends values with surrounding whitespace."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("GET", "/hop")
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 200
        return Hop(**json.loads(response.read()))
    finally:
        connection.close()


def assert_restarted(hop: Hop) -> None:
    """A new trace: a random trace id and flag, no parent, no tracestate (§4.3, §3.4)."""
    assert hop.trace_id != TRACE and hop.parent_id == "" and hop.flags == RANDOM_TRACE_ID
    assert_new_id(hop.trace_id, 32)
    assert hop.leaf_traceparent == f"00-{hop.trace_id}-{hop.span_id}-02"
    assert hop.tracestate == "" and hop.leaf["tracestate"] == ""


E2E_VALID = [p for p in VALID if p.id and not p.id.startswith("ows-")]
E2E_INVALID = [
    p
    for p in INVALID
    if p.id not in {"empty", "blank", "newline-is-not-ows", "vertical-tab-is-not-ows"}
]


@pytest.mark.parametrize(("value", "flags"), E2E_VALID)
def test_e2e_a_valid_traceparent_is_continued(stack: str, value: str, flags: int) -> None:
    """§3.4: "A vendor receiving a traceparent request header MUST send it to outgoing
    requests"; the parent-id becomes this hop's span, the flags are kept (unknown ones
    zeroed), a higher version goes on as 00, and the tracestate goes with it."""
    hop = call(stack, [("traceparent", value), ("tracestate", TRACESTATE)])
    assert (hop.trace_id, hop.parent_id, hop.flags) == (TRACE, PARENT, flags)
    assert hop.span_id != PARENT
    assert hop.leaf_traceparent == hop.continued
    assert hop.leaf["tracestate"] == TRACESTATE


@pytest.mark.parametrize("value", E2E_INVALID)
def test_e2e_an_invalid_traceparent_restarts_the_trace(stack: str, value: str) -> None:
    """§3.2.2.3/§3.2.2.4: "vendors MUST ignore the traceparent"; §4.3: "creates a new
    traceparent header and deletes tracestate"."""
    assert_restarted(call(stack, [("traceparent", value), ("tracestate", TRACESTATE)]))


def test_e2e_without_traceparent_a_trace_is_started(stack: str) -> None:
    """§4.2: "If a tracestate header is received without an accompanying traceparent header,
    it is invalid and MUST be discarded." Level 2 §3.4: "A vendor receiving a request without
    a traceparent header SHOULD generate traceparent headers for outbound requests"."""
    assert_restarted(call(stack, []))
    assert_restarted(call(stack, [("tracestate", TRACESTATE)]))


@pytest.mark.parametrize("name", ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"])
def test_e2e_header_name_in_any_case(stack: str, name: str) -> None:
    """§3.2.1: "Vendors MUST expect the header name in any case (upper, lower, mixed), and
    SHOULD send the header name in lowercase.\""""
    hop = call(stack, [(name, tp())])
    assert hop.trace_id == TRACE and hop.leaf_traceparent == hop.continued
    assert "traceparent" in hop.leaf  # the leaf read it under its lower-case name


@pytest.mark.parametrize("name", ["trace-parent", "trace.parent"])
def test_e2e_other_header_names_are_not_traceparent(stack: str, name: str) -> None:
    """§3.2.1: "The header name is a single word without any delimiters, for example, a hyphen
    (-)." (the harness's test_traceparent_header_name)"""
    assert_restarted(call(stack, [(name, tp())]))


def test_e2e_two_traceparent_fields_restart_the_trace(stack: str) -> None:
    """traceparent is a single value: two fields (the harness's test_traceparent_duplicated)
    start a new trace instead of picking one."""
    hop = call(stack, [("traceparent", tp()), ("traceparent", tp(trace=TRACE[::-1]))])
    assert_restarted(hop)
    assert hop.trace_id != TRACE[::-1]


@pytest.mark.parametrize(("value", "flags"), [p for p in VALID if p.id and p.id.startswith("ows-")])
def test_e2e_ows_around_traceparent(stack: str, value: str, flags: int) -> None:
    """Leading and trailing spaces and tabs are not part of the value (the harness's
    test_traceparent_ows_handling), whether the server or the middleware removes them."""
    hop = call_raw(stack, [("traceparent", value)])
    assert hop.trace_id == TRACE and hop.leaf_traceparent == hop.continued == tp(
        parent=hop.span_id, flags=f"{flags:02x}"
    )


def test_e2e_every_request_is_its_own_operation(stack: str) -> None:
    """§4.3: the parent-id "MUST be set to a value representing the ID of the current
    operation": two requests with the same traceparent get two spans."""
    first, second = (call(stack, [("traceparent", tp())]) for _ in range(2))
    assert first.span_id != second.span_id
    assert {first.leaf_traceparent, second.leaf_traceparent} == {first.continued, second.continued}


def test_e2e_a_traced_hop_keeps_the_random_flag(hops: dict[str, str]) -> None:
    """Level 2 §3.2.2.5.2: "If the flag is set in the incoming traceparent header, it MUST
    also be set in all outgoing traceparent headers which use the same trace-id." With
    tracing on, each attempt of a sampled call names its own span as the parent."""
    hop = call(hops["asgi-traced"], [("traceparent", tp(flags="03"))])
    assert hop.flags == SAMPLED | RANDOM_TRACE_ID
    version, trace_id, parent, flags = hop.leaf_traceparent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "03")
    assert parent not in {PARENT, hop.span_id}  # the attempt's span
