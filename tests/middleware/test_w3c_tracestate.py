"""W3C Trace Context, ``tracestate``: every rule of the header's section, Level 1 and Level 2.

Section numbers are Level 1's (https://www.w3.org/TR/trace-context/); Level 2
(https://www.w3.org/TR/trace-context-2/) moved the field values from §3.3.1.1-§3.3.1.3 to
§3.3.2-§3.3.2.2 and the limits from §3.3.1.5 to §3.3.3.1. Where the two differ the quote says
which level it is from; meshware follows Level 2 there:

* the key grammar: Level 1 has ``simple-key`` (``lcalpha 0*255(...)``) and
  ``multi-tenant-key`` (``tenant-id "@" system-id``, at most 241 and 14 characters); Level 2
  has ``key = ( lcalpha / DIGIT ) 0*255 ( keychar )`` with ``"@"`` among the keychars. Every
  Level 1 key is a Level 2 key, so the Level 2 grammar is the one that rejects no valid
  sender; the W3C harness still sends Level 1's limits as invalid (``t`` * 242 + ``@v``).

The same real servers as ``test_w3c_traceparent.py`` carry the end-to-end cases: a middle hop
behind ``MeshMiddleware`` (Starlette) or ``MeshWSGIMiddleware`` (Flask) calls a leaf through
the mesh client, and the leaf echoes the ``tracestate`` it received.
"""

from __future__ import annotations

import random

import pytest

from meshware.middleware.context import (
    MAX_TRACESTATE_CHARS,
    from_headers,
    parse_tracestate,
    truncate_tracestate,
)
from tests.middleware.test_w3c_traceparent import (  # noqa: F401 (fixtures: hops, stack)
    PARENT,
    TRACE,
    assert_restarted,
    call,
    call_raw,
    hops_fixture,
    stack_fixture,
    tp,
)

LCALPHA = "abcdefghijklmnopqrstuvwxyz"
KEY_CHARS = LCALPHA + "0123456789_-*/"
"""Every character of Level 1's simple-key (the harness's key_without_vendor)."""
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
"""Every character a value may hold: printable ASCII but "," and "=" (it starts with a space)."""


def members(count: int, first: int = 1) -> str:
    """``count`` list-members ``kNN=NN``, numbered from ``first``."""
    return ",".join(f"k{i:02d}={i:02d}" for i in range(first, first + count))


# -- the cases --------------------------------------------------------------------------------

VALID = [
    # §3.3.2 examples: "Single tracing system (generic format)" / "Multiple tracing systems".
    pytest.param("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7", id="spec-example-single"),
    pytest.param(
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        id="spec-example-multiple",
    ),
    # §3.3.1.1: "Spaces and horizontal tabs surrounding list-members are ignored." (the
    # harness's test_tracestate_ows_handling); §3.3.1.2: "list-member 0*31( OWS "," OWS
    # list-member )"
    pytest.param("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3", id="ows-around-commas"),
    pytest.param("foo=1\t \t,\t \tbar=2,\t \tbaz=3", "foo=1,bar=2,baz=3", id="ows-tabs-first"),
    pytest.param(" foo=1", "foo=1", id="ows-leading-space"),
    pytest.param("\tfoo=1", "foo=1", id="ows-leading-tab"),
    pytest.param("foo=1 ", "foo=1", id="ows-trailing-space"),
    pytest.param("foo=1\t", "foo=1", id="ows-trailing-tab"),
    pytest.param("\t foo=1 \t", "foo=1", id="ows-both-sides"),
    # §3.3.1.1: "Empty and whitespace-only list members are allowed. Vendors MUST accept empty
    # tracestate headers but SHOULD avoid sending them."
    pytest.param("foo=1,,bar=2", "foo=1,bar=2", id="empty-member"),
    pytest.param(",foo=1", "foo=1", id="empty-member-first"),
    pytest.param("foo=1,", "foo=1", id="empty-member-last"),
    pytest.param(" , \t,foo=1, ,bar=2,\t", "foo=1,bar=2", id="whitespace-only-members"),
    pytest.param("", "", id="empty-header"),
    pytest.param(" \t ", "", id="whitespace-only-header"),
    pytest.param(",", "", id="comma-only-header"),
    pytest.param(" , ,\t, ", "", id="empty-members-only"),
    # Level 2 §3.3.2.2.2 Value: "All leading spaces MUST be preserved as part of the value. All
    # trailing spaces are considered to be optional whitespace characters not part of the value.
    # Optional trailing whitespace MAY be excluded when propagating the header."
    pytest.param("foo=  bar", "foo=  bar", id="value-leading-spaces-kept"),
    pytest.param("foo=b a r", "foo=b a r", id="value-inner-spaces"),
    pytest.param("foo=bar  ,baz=1", "foo=bar,baz=1", id="value-trailing-spaces-dropped"),
    # §3.3.1.3.2: "The value is an opaque string containing up to 256 printable ASCII
    # characters (i.e., the range 0x20 to 0x7E) except comma (,) and (=)." (the harness's
    # test_tracestate_all_allowed_characters)
    pytest.param(f"foo={VALUE_CHARS}", f"foo={VALUE_CHARS}", id="value-every-allowed-char"),
    pytest.param("foo=" + "v" * 256, "foo=" + "v" * 256, id="value-256-chars"),
    pytest.param("foo=a", "foo=a", id="value-1-char"),
    # §3.3.1.3.1 Key (both levels): a key starting with a lower-case letter, up to 256 of
    # lcalpha / DIGIT / "_" / "-" / "*" / "/"; Level 1 multi-tenant-key: tenant-id (up to 241,
    # may start with a digit) "@" system-id (up to 14, starts with lcalpha)
    pytest.param(f"{KEY_CHARS}=1", f"{KEY_CHARS}=1", id="key-every-allowed-char"),
    pytest.param(f"{KEY_CHARS}@a-z0-9_-*/=1", f"{KEY_CHARS}@a-z0-9_-*/=1", id="key-multi-tenant"),
    pytest.param("a=1", "a=1", id="key-1-char"),
    pytest.param("z" * 256 + "=1", "z" * 256 + "=1", id="key-256-chars"),
    pytest.param(
        "t" * 241 + "@" + "v" * 14 + "=1", "t" * 241 + "@" + "v" * 14 + "=1", id="key-tenant-limits"
    ),
    pytest.param("0tenant@system=1", "0tenant@system=1", id="key-tenant-starts-with-digit"),
    # Level 2 §3.3.2.2.1: "key = ( lcalpha / DIGIT ) 0*255 ( keychar )", "keychar = lcalpha /
    # DIGIT / "_" / "-"/ "*" / "/" / "@"" -- "A key MUST begin with a lowercase letter or a
    # digit and contain up to 256 characters including [...] and at signs (@)." Valid in
    # Level 2, invalid in Level 1's grammar:
    pytest.param("0abc=1", "0abc=1", id="l2-key-starts-with-digit"),
    pytest.param("foo@bar@baz=1", "foo@bar@baz=1", id="l2-key-two-at-signs"),
    pytest.param("foo@@bar=1", "foo@@bar=1", id="l2-key-double-at-sign"),
    pytest.param("foo@=1", "foo@=1", id="l2-key-ends-with-at-sign"),
    pytest.param("t" * 242 + "@v=1", "t" * 242 + "@v=1", id="l2-key-tenant-242"),
    pytest.param("t@" + "v" * 15 + "=1", "t@" + "v" * 15 + "=1", id="l2-key-system-15"),
    pytest.param("t@0sys=1", "t@0sys=1", id="l2-key-system-starts-with-digit"),
    # §3.3.1.1: "There can be a maximum of 32 list-members in a list."
    pytest.param(members(32), members(32), id="32-members"),
    pytest.param(members(32) + ",, ,", members(32), id="32-members-and-empty-ones"),
]

INVALID = [
    # §3.3.1.3.1 Key: "Identifiers MUST begin with a lowercase letter or a digit, and can only
    # contain lowercase letters (a-z), digits (0-9), underscores (_), dashes (-), asterisks (*),
    # and forward slashes (/)." (Level 1; Level 2 adds "@") -- the harness's
    # test_tracestate_key_illegal_characters and test_tracestate_key_illegal_vendor_format
    pytest.param("FOO=1", id="key-upper-case"),
    pytest.param("fOo=1", id="key-mixed-case"),
    pytest.param("foo.bar=1", id="key-dot"),
    pytest.param("foo =1", id="key-trailing-space"),
    pytest.param("foo\t=1", id="key-trailing-tab"),
    pytest.param("foo bar=1", id="key-inner-space"),
    pytest.param("fóo=1", id="key-non-ascii"),
    pytest.param("@foo=1,bar=2", id="key-starts-with-at-sign"),
    pytest.param("_foo=1", id="key-starts-with-underscore"),
    pytest.param("-foo=1", id="key-starts-with-dash"),
    pytest.param("*foo=1", id="key-starts-with-asterisk"),
    pytest.param("/foo=1", id="key-starts-with-slash"),
    pytest.param("=1", id="key-empty"),
    pytest.param("z" * 257 + "=1", id="key-257-chars"),
    # §3.3.1.3.2 Value: "value = 0*255(chr) nblk-chr" (the harness's
    # test_tracestate_value_illegal_characters)
    pytest.param("foo=bar=baz", id="value-equals-sign"),
    pytest.param("foo=,bar=3", id="value-empty"),
    pytest.param("foo= ,bar=3", id="value-space-only"),
    pytest.param("foo=ba\tr", id="value-tab"),
    pytest.param("foo=ba\x7fr", id="value-del"),
    pytest.param("foo=ba\x00r", id="value-nul"),
    pytest.param("foo=bär", id="value-non-ascii"),
    pytest.param("foo=" + "v" * 257, id="value-257-chars"),
    # §3.3.1.2: "list-member = (key "=" value) / OWS"
    pytest.param("foo", id="member-without-equals"),
    pytest.param("foo=1,bar", id="second-member-without-equals"),
    pytest.param("foo=1,BAR=2,baz=3", id="one-bad-member-of-three"),
    # §3.3.1.4: "Only one entry per key is allowed because the entry represents that last
    # position in the trace." (Level 2 §3.5: "Adding a key/value pair MUST NOT result in the
    # same key being present multiple times"; the harness's test_tracestate_duplicated_keys)
    pytest.param("foo=1,foo=1", id="duplicate-key-same-value"),
    pytest.param("foo=1,foo=2", id="duplicate-key"),
    pytest.param("foo=1, bar=2 ,foo=3", id="duplicate-key-apart"),
    # §3.3.1.1: "There can be a maximum of 32 list-members in a list."
    pytest.param(members(33), id="33-members"),
]


# -- the parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), VALID)
def test_valid_tracestate_is_propagated(value: str, expected: str) -> None:
    assert parse_tracestate(value) == expected


@pytest.mark.parametrize("value", INVALID)
def test_invalid_tracestate_is_dropped_whole(value: str) -> None:
    """§4.3: "If the tracestate header cannot be parsed the vendor MAY discard the entire
    header." (the harness, at its strict level, expects it discarded)"""
    assert parse_tracestate(value) == ""


def test_tracestate_failure_does_not_affect_traceparent() -> None:
    """§3.3: "failure to parse tracestate MUST NOT affect the parsing of traceparent.\""""
    context = from_headers({"traceparent": tp(), "tracestate": "FOO=1"})
    assert (context.trace_id, context.parent_id, context.tracestate) == (TRACE, PARENT, "")
    assert b"tracestate" not in dict(context.outbound_headers(now=0.0))


def test_tracestate_is_read_with_a_higher_traceparent_version() -> None:
    """§3.3.3: "Vendors need to attempt to parse tracestate if a higher version is detected,
    to the best of its ability.\""""
    context = from_headers({"traceparent": tp("cc") + "-x", "tracestate": "foo=1, bar=2"})
    assert (context.trace_id, context.tracestate) == (TRACE, "foo=1,bar=2")


def test_tracestate_is_sent_on_unchanged_and_an_empty_one_not_at_all() -> None:
    """§3.5: "Vendors receiving a tracestate request header MUST send it to outgoing
    requests."; §3.3.1.1: empty headers: vendors "SHOULD avoid sending them"."""
    context = from_headers({"traceparent": tp(), "tracestate": "rojo=1,congo=2"})
    assert dict(context.outbound_headers(now=0.0))[b"tracestate"] == b"rojo=1,congo=2"
    empty = from_headers({"traceparent": tp(), "tracestate": " , "})
    assert b"tracestate" not in dict(empty.outbound_headers(now=0.0))


# -- truncation (§3.3.1.5 tracestate Limits) ------------------------------------------------


def entry(key: str, length: int) -> str:
    """A valid list-member of exactly ``length`` characters (at most 513: 256 + "=" + 256)."""
    value = length - len(key) - 1
    if value > 256:  # the value is full: the key takes the rest
        key, value = key + "k" * (value - 256), 256
    member = f"{key}={'v' * value}"
    assert len(member) == length
    assert parse_tracestate(member) == (member if length <= MAX_TRACESTATE_CHARS else "")
    return member


def test_512_characters_are_always_propagated() -> None:
    """§3.3.1.5: "Vendors SHOULD propagate at least 512 characters of a combined header. This
    length includes commas required to separate list items and optional white space"."""
    header = ",".join([entry("a", 100), entry("b", 100), entry("c", 100), entry("d", 209)])
    assert len(header) == MAX_TRACESTATE_CHARS == 512
    assert parse_tracestate(header) == header
    padded = header.replace(",", " , ")  # the OWS is not propagated, so it costs nothing
    assert parse_tracestate(padded) == header


def test_entries_over_128_characters_go_first_the_last_one_first() -> None:
    """§3.3.1.5: "the vendor MUST truncate whole entries. Entries larger than 128 characters
    long SHOULD be removed first." No more than needed: the first large entry stays."""
    big1, small1, big2, small2, small3 = (
        entry("big1", 200),
        entry("small1", 50),
        entry("big2", 200),
        entry("small2", 50),
        entry("small3", 60),
    )
    header = ",".join([big1, small1, big2, small2, small3])
    assert len(header) == 564
    assert parse_tracestate(header) == ",".join([big1, small1, small2, small3])


def test_then_entries_go_from_the_end() -> None:
    """§3.3.1.5: "Then entries SHOULD be removed starting from the end of tracestate.\""""
    entries = [entry(f"k{i:02d}", 20) for i in range(32)]
    assert len(",".join(entries)) == 671
    assert parse_tracestate(",".join(entries)) == ",".join(entries[:24])  # 503 characters
    large = [entry("big", 300), *entries[:20]]  # 300 + 20 * 21 = 720: the large one is enough
    assert parse_tracestate(",".join(large)) == ",".join(entries[:20])


def test_an_entry_of_exactly_128_characters_is_not_large() -> None:
    """§3.3.1.5: "larger than 128 characters" -- 128 itself goes only in its turn from the end."""
    exact = entry("exact", 128)
    tail = [entry(f"s{i}", 60) for i in range(7)]
    header = ",".join([exact, *tail])
    assert len(header) == 555
    assert parse_tracestate(header) == ",".join([exact, *tail[:6]])


def test_an_entry_longer_than_the_limit_is_removed() -> None:
    """Key 256 + "=" + value 256 is a valid 513-character entry, larger than the limit."""
    huge = "k" * 256 + "=" + "v" * 256
    assert parse_tracestate(huge) == ""
    assert parse_tracestate(f"a=1,{huge},b=2") == "a=1,b=2"


def test_truncation_keeps_whole_entries_in_order() -> None:
    """§3.3.1.5: "the vendor MUST truncate whole entries", and §3.5: "the order of unmodified
    key/value pairs MUST be preserved"."""
    rng = random.Random(20240328)
    for _ in range(300):
        count = rng.randint(1, 32)
        entries = [
            entry(f"k{i}", rng.choice((5, 40, 127, 128, 129, 250, 513))) for i in range(count)
        ]
        result = truncate_tracestate(entries)
        kept = result.split(",") if result else []
        assert len(result) <= MAX_TRACESTATE_CHARS
        assert kept == [e for e in entries if e in kept]  # a subsequence: whole, in order
        if len(",".join(entries)) <= MAX_TRACESTATE_CHARS:
            assert kept == entries
        dropped = [e for e in entries if e not in kept]
        if any(len(e) <= 128 for e in dropped):  # small ones only go once no large one is left
            assert all(len(e) <= 128 for e in kept)


# -- end to end: real servers, the middleware and the mesh client ----------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [p for p in VALID if p.id in {"spec-example-multiple", "ows-around-commas", "empty-member"}],
)
def test_e2e_tracestate_is_propagated(stack: str, value: str, expected: str) -> None:
    """§3.5: "Vendors receiving a tracestate request header MUST send it to outgoing
    requests.\""""
    hop = call(stack, [("traceparent", tp()), ("tracestate", value)])
    assert hop.tracestate == expected and hop.leaf["tracestate"] == expected


def test_e2e_multiple_fields_are_combined_in_order(stack: str) -> None:
    """§3.3.1.1: "When receiving multiple tracestate header fields, they MUST be combined into
    a single header according to RFC7230." (the harness's
    test_tracestate_multiple_headers_different_keys)"""
    hop = call(
        stack,
        [
            ("traceparent", tp()),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3"),
        ],
    )
    assert hop.leaf["tracestate"] == "foo=1,bar=2,rojo=1,congo=2,baz=3"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([""], id="one-empty-field"),
        pytest.param(["foo=1", ""], id="empty-field-last"),
        pytest.param(["", "foo=1"], id="empty-field-first"),
    ],
)
def test_e2e_empty_fields_are_accepted(stack: str, fields: list[str]) -> None:
    """§3.3.1.1: "Vendors MUST accept empty tracestate headers" -- "it is difficult for a vendor
    to recognize the empty value when multiple tracestate headers are sent" (the harness's
    test_tracestate_empty_header)."""
    hop = call(stack, [("traceparent", tp()), *(("tracestate", f) for f in fields)])
    assert hop.trace_id == TRACE
    assert hop.leaf["tracestate"] == ("foo=1" if any(fields) else "")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(["foo=1", "foo=1"], "", id="duplicate-key-across-fields"),
        pytest.param(["foo=1", "foo=2"], "", id="duplicate-key-other-value"),
        pytest.param(
            [members(10), members(10, 11), members(10, 21), members(2, 31)],
            members(32),
            id="32-members-in-4-fields",
        ),
        pytest.param(
            [members(10), members(10, 11), members(10, 21), members(3, 31)],
            "",
            id="33-members-in-4-fields",
        ),
        pytest.param(["foo=1", "z" * 256 + "=1"], "foo=1," + "z" * 256 + "=1", id="key-256"),
        pytest.param(["foo=1", "z" * 257 + "=1"], "", id="key-257"),
        pytest.param(
            ["foo=1", "t" * 241 + "@" + "v" * 14 + "=1"],
            "foo=1," + "t" * 241 + "@" + "v" * 14 + "=1",
            id="key-tenant-limits",
        ),
    ],
)
def test_e2e_fields_are_validated_together(stack: str, fields: list[str], expected: str) -> None:
    """The combined header is what is validated: one entry per key (§3.3.1.4), at most 32
    members (§3.3.1.1), keys of at most 256 characters (§3.3.1.3.1) -- the harness's
    test_tracestate_duplicated_keys, _member_count_limit and _key_length_limit."""
    hop = call(stack, [("traceparent", tp()), *(("tracestate", f) for f in fields)])
    assert hop.trace_id == TRACE and hop.leaf["tracestate"] == expected


@pytest.mark.parametrize(
    "value",
    [p for p in INVALID if p.id in {"key-trailing-space", "key-upper-case", "key-dot"}]
    + [
        p
        for p in INVALID
        if p.id in {"value-equals-sign", "value-empty", "key-starts-with-at-sign"}
    ],
)
def test_e2e_invalid_tracestate_is_dropped(stack: str, value: str) -> None:
    """§4.3: "If the tracestate header cannot be parsed the vendor MAY discard the entire
    header." The traceparent is continued all the same (§3.3)."""
    hop = call(stack, [("traceparent", tp()), ("tracestate", value)])
    assert hop.trace_id == TRACE and hop.leaf_traceparent == hop.continued
    assert hop.leaf["tracestate"] == ""


def test_e2e_every_allowed_character(stack: str) -> None:
    """§3.3.1.3: every key and value character (the harness's
    test_tracestate_all_allowed_characters)."""
    for key in (KEY_CHARS, f"{KEY_CHARS}@a-z0-9_-*/"):
        hop = call(stack, [("traceparent", tp()), ("tracestate", f"{key}={VALUE_CHARS}")])
        assert hop.leaf["tracestate"] == f"{key}={VALUE_CHARS}"


@pytest.mark.parametrize("name", ["TraceState", "TrAcEsTaTe", "TRACESTATE"])
def test_e2e_header_name_in_any_case(stack: str, name: str) -> None:
    """§3.3.1: "Vendors MUST expect the header name in any case (upper, lower, mixed)"."""
    hop = call(stack, [("traceparent", tp()), (name, "foo=1")])
    assert hop.leaf["tracestate"] == "foo=1"


@pytest.mark.parametrize("name", ["trace-state", "trace.state"])
def test_e2e_other_header_names_are_not_tracestate(stack: str, name: str) -> None:
    """§3.3.1: "The header name is a single word without any delimiters" (the harness's
    test_tracestate_header_name)."""
    hop = call(stack, [("traceparent", tp()), (name, "foo=1")])
    assert hop.leaf["tracestate"] == ""


def test_e2e_ows_around_tracestate(stack: str) -> None:
    """§3.3.1.1: "Spaces and horizontal tabs surrounding list-members are ignored." -- at the
    edges of the field too, whether the server or the middleware strips them."""
    hop = call_raw(stack, [("traceparent", tp()), ("tracestate", "\t foo=1 ,\tbar=2 \t")])
    assert hop.leaf["tracestate"] == "foo=1,bar=2"


def test_e2e_tracestate_without_valid_traceparent_is_dropped(stack: str) -> None:
    """§4.2: "If a tracestate header is received without an accompanying traceparent header,
    it is invalid and MUST be discarded."; §3.3: "If the vendor failed to parse traceparent, it
    MUST NOT attempt to parse tracestate." (the harness's
    test_tracestate_included_traceparent_missing)"""
    assert_restarted(call(stack, [("tracestate", "foo=1,bar=2")]))
    assert_restarted(call(stack, [("traceparent", tp("ff")), ("tracestate", "foo=1")]))


def test_e2e_a_long_tracestate_is_truncated(stack: str) -> None:
    """§3.3.1.5: "In a situation where tracestate needs to be truncated due to size limitations,
    the vendor MUST truncate whole entries. Entries larger than 128 characters long SHOULD be
    removed first. Then entries SHOULD be removed starting from the end of tracestate.\""""
    big = entry("big", 300)
    small = [entry(f"s{i:02d}", 30) for i in range(20)]  # 20 * 31 - 1 = 619 without the big one
    hop = call(stack, [("traceparent", tp()), ("tracestate", ",".join([big, *small]))])
    assert hop.leaf["tracestate"] == ",".join(small[:16])  # 495 characters
    assert len(hop.leaf["tracestate"]) <= MAX_TRACESTATE_CHARS


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(["userId=alice", "tier=gold"], "userId=alice,tier=gold", id="two-fields"),
        pytest.param(["", "userId=alice"], "userId=alice", id="empty-field-first"),
    ],
)
def test_e2e_baggage_fields_are_combined(stack: str, fields: list[str], expected: str) -> None:
    """W3C Baggage: "Multiple baggage headers are allowed. Values can be combined in a single
    header according to RFC 7230." -- joined in order, like tracestate."""
    hop = call(stack, [("traceparent", tp()), *(("baggage", f) for f in fields)])
    assert hop.baggage == expected and hop.leaf["baggage"] == expected
