"""Parsing inbound context headers: strict, and never raising on garbage."""

from __future__ import annotations

import pytest

from meshware.middleware.context import (
    from_headers,
    parse_baggage,
    parse_deadline,
    parse_traceparent,
    parse_tracestate,
)

T = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_valid_traceparent() -> None:
    parsed = parse_traceparent(T)
    assert parsed is not None
    assert parsed.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parsed.parent_id == "00f067aa0ba902b7"
    assert parsed.sampled


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 with more
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(value: str) -> None:
    assert parse_traceparent(value) is None
    context = from_headers({"traceparent": value})
    assert len(context.trace_id) == 32 and context.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"


def test_future_version_keeps_the_first_four_fields() -> None:
    parsed = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever")
    assert parsed is not None and parsed.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_tracestate_and_baggage() -> None:
    assert (
        parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")
        == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert parse_tracestate("Bad Key=1") == ""
    assert parse_tracestate("a=1,a=2") == ""  # duplicate keys
    assert parse_tracestate(",".join(f"k{i}=v" for i in range(33))) == ""  # over 32 members
    assert (
        parse_baggage("userId=alice, isProduction=false;ttl=60")
        == "userId=alice,isProduction=false;ttl=60"
    )
    assert parse_baggage("no equals sign") == ""
    assert parse_baggage("k=" + "v" * 9000) == ""


def test_deadline_and_request_id() -> None:
    assert parse_deadline("1500", now=10.0) == 11.5
    for bad in ("-1", "1.5", "soon", "9" * 20, ""):
        assert parse_deadline(bad, now=0.0) is None
    context = from_headers({"traceparent": T, "x-request-id": "abc-123", "baggage": "k=v"}, now=0.0)
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.span_id != "00f067aa0ba902b7"  # this hop's own span
    assert context.request_id == "abc-123"
    headers = dict(context.outbound_headers(now=0.0))
    assert headers[b"traceparent"].decode() == f"00-{context.trace_id}-{context.span_id}-01"
    assert headers[b"baggage"] == b"k=v"
    assert from_headers({"x-request-id": "bad id with spaces"}).request_id != "bad id with spaces"
