"""The header views the outbound hot path reads instead of httpx's public accessors."""

from __future__ import annotations

from typing import cast

import httpx
import pytest

from meshware.routing.request import HeaderFields
from meshware.transport.endpoint import _taken
from meshware.transport.outbound import header_fields


def _request(headers: list[tuple[str, str]]) -> httpx.Request:
    return httpx.Client().build_request("GET", "http://reviews:9080/x", headers=headers)


HEADERS = [
    ("X-Mixed-Case", "One"),
    ("end-user", "jason"),
    ("X-Mixed-Case", "Two"),
    ("Cookie", "a=1; b=2"),
    ("x-plain", "cafe"),
]


def test_header_fields_match_httpx_public_view() -> None:
    """Pins the private layout read by ``header_fields`` to httpx's public accessors: an
    httpx release that changes it fails here instead of misrouting."""
    request = _request(HEADERS)
    fields = header_fields(request.headers)
    assert [(name, value) for name, _, value in fields] == request.headers.raw
    assert [lower for _, lower, _ in fields] == [name.lower() for name, _ in request.headers.raw]
    assert [(lower.decode(), value.decode("latin-1")) for _, lower, value in fields] == (
        request.headers.multi_items()
    )


def test_header_fields_falls_back_to_the_public_view() -> None:
    class Public:
        """What a future httpx ``Headers`` without the private list would still offer."""

        raw = [(b"Host", b"reviews"), (b"X-A", b"1")]

    fields = header_fields(cast(httpx.Headers, Public()))
    assert fields == [(b"Host", b"host", b"reviews"), (b"X-A", b"x-a", b"1")]


def test_header_fields_mapping_reads_like_a_dict_of_lower_case_names() -> None:
    view = HeaderFields(header_fields(_request(HEADERS).headers))
    assert view.get("x-mixed-case") == "One, Two"  # repeated fields joined, in order
    assert view["end-user"] == "jason"
    assert view.get("x-plain") == "cafe"
    assert HeaderFields([(b"X-L", b"x-l", b"caf\xe9")]).get("x-l") == "caf\xe9"  # latin-1
    assert view.get("absent") is None
    assert view.get("absent", "fallback") == "fallback"
    assert "cookie" in view and "absent" not in view and 3 not in view
    with pytest.raises(KeyError):
        view["absent"]
    expected = {
        "host": "reviews:9080",
        "x-mixed-case": "One, Two",
        "end-user": "jason",
        "cookie": "a=1; b=2",
        "x-plain": "cafe",
    }
    assert {k: view[k] for k in expected} == expected
    assert set(view) >= set(expected) and len(view) == len(dict(view))


def test_response_peer_metadata_is_taken_out_and_the_length_read() -> None:
    fields = [
        (b"Content-Type", b"text/plain"),
        (b"X-Meshware-Peer", b"wk=reviews-v1;ns=default"),
        (b"content-length", b"13"),
    ]
    kept, peer, length = _taken(fields)
    assert kept == [(b"Content-Type", b"text/plain"), (b"content-length", b"13")]
    assert peer == b"wk=reviews-v1;ns=default" and length == 13
    kept, peer, length = _taken([(b"transfer-encoding", b"chunked")])
    assert kept == [(b"transfer-encoding", b"chunked")] and peer is None and length is None
    assert _taken([(b"content-length", b"nope")])[2] is None
