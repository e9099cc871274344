"""Path normalisation for authorization (Istio's DECODE_AND_MERGE_SLASHES), step by step, plus
the invariants every normalised path keeps (checked on generated hostile paths)."""

from __future__ import annotations

import random
import re

import pytest

from meshware.security.paths import canonical_escapes, normalize_path

NORMALISED = [
    # nothing to do
    ("/", "/"),
    ("/reviews/1", "/reviews/1"),
    ("/static/app.js", "/static/app.js"),
    ("/.well-known/openid-configuration", "/.well-known/openid-configuration"),
    ("/a..b/c.", "/a..b/c."),
    ("/admin/", "/admin/"),
    ("/café", "/café"),
    # case is kept: paths are case-sensitive
    ("/ADMIN", "/ADMIN"),
    ("/Reviews/%7EAlice", "/Reviews/~Alice"),
    # the query is not part of the path
    ("/reviews?id=1", "/reviews"),
    ("/reviews?next=/admin#x", "/reviews"),
    ("/a/../b?x=../../c", "/b"),
    # unreserved characters are decoded (Istio's table: %2d %2e %30-39 %41-5a %5f %61-7a %7e)
    ("/%61dmin", "/admin"),
    ("/%41%44%4d%49%4E", "/ADMIN"),
    ("/%30%39", "/09"),
    ("/%2d%2D%5f%5F%7e%7E", "/--__~~"),
    ("/a%2eb", "/a.b"),
    # other escapes stay encoded, with upper-case hex
    ("/a%20b", "/a%20b"),
    ("/a%3ab%3Ac", "/a%3Ab%3Ac"),
    ("/a%3fb", "/a%3Fb"),  # an encoded '?' is not a query
    ("/a%23b", "/a%23b"),  # an encoded '#' is not a fragment
    ("/%e2%82%ac", "/%E2%82%AC"),
    ("/%0a%0D", "/%0A%0D"),
    # decoded once, never twice
    ("/%252e%252e/admin", "/%252e%252e/admin"),
    ("/%25%32%65", "/%252e"),
    ("/%2525", "/%2525"),
    # encoded slash and backslash are slashes (DECODE_AND_MERGE_SLASHES)
    ("/admin%2fsecret", "/admin/secret"),
    ("/admin%2Fsecret", "/admin/secret"),
    ("/%2Fadmin", "/admin"),
    ("/%5Cadmin", "/admin"),
    ("/%5cadmin", "/admin"),
    ("/a%5c%5Cb", "/a/b"),
    # a backslash is a slash
    ("/a\\b", "/a/b"),
    ("/\\admin", "/admin"),
    # repeated slashes are merged
    ("//admin", "/admin"),
    ("///a////b//", "/a/b/"),
    # dot segments are resolved, never above the root
    ("/./admin", "/admin"),
    ("/foo/../admin", "/admin"),
    ("/a/b/../../admin", "/admin"),
    ("/../admin", "/admin"),
    ("/../../../../admin", "/admin"),
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/..", "/"),
    ("/.", "/"),
    ("/..", "/"),
    ("/a/./", "/a/"),
    ("/%2e", "/"),
    ("/%2e%2e/admin", "/admin"),
    ("/x/%2E%2E/admin", "/admin"),
    ("/x/.%2e/admin", "/admin"),
    ("/admin%2F..", "/"),
    ("/a/..%2fadmin", "/admin"),
    ("/a/..%5Cadmin", "/admin"),
    ("/a\\..\\admin", "/admin"),
    # slashes merge before dots resolve: "/a//.." is "/a/.." (a file system's reading)
    ("/a//../b", "/b"),
    ("/a/b//..//c", "/a/c"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED, ids=[raw for raw, _ in NORMALISED])
def test_normalised(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


REFUSED = [
    ("", "empty"),
    ("admin", "not origin-form"),
    ("*", "asterisk-form"),
    ("http://example.com/admin", "absolute-form"),
    ("%2Fadmin", "no leading slash before decoding"),
    ("\\admin", "a backslash is not a leading slash"),
    ("?x=1", "only a query"),
    ("/a%00b", "NUL"),
    ("/admin%00.html", "NUL"),
    ("/a%", "truncated escape"),
    ("/a%2", "truncated escape"),
    ("/a%zz", "not hex"),
    ("/a%g0", "not hex"),
    ("/a%%32%65", "a lone percent sign"),
    ("/a%+1", "not hex"),
    ("/a#b", "fragment"),
    ("/a/#/../admin", "fragment"),
    ("/a b", "space"),
    ("/a\tb", "tab"),
    ("/a\nb", "newline"),
    ("/a\x00b", "raw NUL"),
    ("/a\x7fb", "DEL"),
]


@pytest.mark.parametrize(("raw", "why"), REFUSED, ids=[why + ":" + repr(r) for r, why in REFUSED])
def test_refused(raw: str, why: str) -> None:
    assert normalize_path(raw) is None, why


CANONICAL_VALUES = [
    ("/admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/a%3ab", "/a%3Ab"),
    ("/a%2fb", "/a/b"),
    ("/a\\b", "/a/b"),
    ("*.PNG", "*.PNG"),
    ("/a%zz", "/a%zz"),  # left as written: such a value never matches
    ("/a%", "/a%"),
    ("/static/.", "/static/."),  # a prefix is not a complete path: dots are kept
    ("/a//b", "/a//b"),
]


@pytest.mark.parametrize(("value", "expected"), CANONICAL_VALUES)
def test_policy_values_get_the_escape_form_of_normalised_paths(value: str, expected: str) -> None:
    assert canonical_escapes(value) == expected


# -- invariants on generated paths ------------------------------------------------------------

_PIECES = [
    "/", "//", "/.", "/..", ".", "..", "a", "admin", "ADMIN", "%2e", "%2E", "%2f", "%2F",
    "%5c", "%5C", "\\", "%61", "%25", "%252e", "%3a", "%7e", "~", "-", "_", "%20", "x.y",
]  # fmt: skip
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _generated(count: int) -> list[str]:
    rng = random.Random(20240611)
    return ["/" + "".join(rng.choices(_PIECES, k=rng.randint(1, 12))) for _ in range(count)]


def test_normalised_paths_are_canonical_and_normalising_them_again_changes_nothing() -> None:
    for raw in _generated(5000):
        path = normalize_path(raw)
        assert path is not None, raw
        assert path.startswith("/"), (raw, path)
        assert "//" not in path, (raw, path)
        assert "\\" not in path, (raw, path)
        segments = path.split("/")[1:]
        assert "." not in segments and ".." not in segments, (raw, path)
        for escape in _ESCAPE.findall(path):
            assert escape == escape.upper(), (raw, path)
            assert int(escape, 16) not in _UNRESERVED | {0x2F, 0x5C}, (raw, path)
        assert normalize_path(path) == path, (raw, path)
