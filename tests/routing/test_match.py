"""Match blocks compiled into predicates follow Istio's semantics, and the match index never
changes which block matches first."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from meshware.config.model.common import StringMatch, frozen_map
from meshware.config.model.networking import HTTPMatchRequest
from meshware.routing.match import (
    always,
    build_index,
    compile_block,
    compile_matches,
    compile_string_match,
    default_port,
)
from meshware.routing.request import RequestInfo

EXACT, PREFIX, REGEX, PRESENT = "exact", "prefix", "regex", "present"


def req(
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "reviews",
    query: str = "",
    scheme: str = "http",
    port: int | None = None,
    headers: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    namespace: str = "default",
) -> RequestInfo:
    return RequestInfo(
        method=method,
        host=host,
        path=path,
        query=query,
        scheme=scheme,
        port=port,
        headers=frozen_map(headers),
        source_labels=frozen_map(labels),
        source_namespace=namespace,
    )


def sm(kind: str, value: str = "") -> StringMatch:
    return StringMatch(kind, value)  # type: ignore[arg-type]


def block(**fields: object) -> HTTPMatchRequest:
    for key in ("headers", "query_params", "without_headers", "source_labels"):
        if key in fields:
            fields[key] = frozen_map(fields[key])  # type: ignore[arg-type]
    return HTTPMatchRequest(**fields)  # type: ignore[arg-type]


def matches(b: HTTPMatchRequest, request: RequestInfo) -> bool:
    return compile_block(b)(request)


# -- structure --------------------------------------------------------------------------------


def test_empty_match_list_and_empty_block_match_everything() -> None:
    assert compile_matches(())(req("/anything", method="DELETE"))
    assert compile_block(None) is always
    assert matches(block(), req("/x"))


def test_blocks_are_ored_and_conditions_anded() -> None:
    route = compile_matches(
        (
            block(uri=sm(PREFIX, "/api"), method=sm(EXACT, "POST")),
            block(headers={"end-user": sm(EXACT, "jason")}),
        )
    )
    assert route(req("/api/x", method="POST"))  # first block, both conditions
    assert not route(req("/api/x", method="GET"))  # first block fails one condition
    assert route(req("/other", headers={"end-user": "jason"}))  # second block
    assert not route(req("/other", headers={"end-user": "bob"}))


# -- uri --------------------------------------------------------------------------------------


def test_uri_exact_prefix_regex_ignore_the_query() -> None:
    request = req("/reviews/1", query="user=jason&x=1")
    assert matches(block(uri=sm(EXACT, "/reviews/1")), request)
    assert not matches(block(uri=sm(EXACT, "/reviews/1?user=jason")), request)
    assert matches(block(uri=sm(PREFIX, "/reviews")), request)
    assert matches(block(uri=sm(PREFIX, "/rev")), request)  # plain string prefix, like Envoy
    assert not matches(block(uri=sm(PREFIX, "/ratings")), request)
    assert matches(block(uri=sm(REGEX, r"/reviews/\d+")), request)


def test_uri_regex_is_a_full_match() -> None:
    rule = block(uri=sm(REGEX, r"/api/v\d"))
    assert matches(rule, req("/api/v1"))
    assert not matches(rule, req("/api/v1/users"))  # RE2 FullMatch, not search
    assert not matches(rule, req("/x/api/v1"))
    # RE2's \d is ASCII-only, unlike Python's default.
    assert not matches(rule, req("/api/v\u0663"))


def test_ignore_uri_case_applies_to_exact_and_prefix_but_not_regex() -> None:
    assert matches(block(uri=sm(EXACT, "/Login"), ignore_uri_case=True), req("/LOGIN"))
    assert matches(block(uri=sm(PREFIX, "/API/"), ignore_uri_case=True), req("/api/v1"))
    assert not matches(block(uri=sm(EXACT, "/Login")), req("/LOGIN"))
    assert not matches(block(uri=sm(PREFIX, "/API/")), req("/api/v1"))
    assert not matches(block(uri=sm(REGEX, "/api"), ignore_uri_case=True), req("/API"))


def test_ignore_uri_case_folds_ascii_only() -> None:
    # Envoy's case-insensitive match folds ASCII letters; other letters must match exactly.
    rule = block(uri=sm(EXACT, "/CAFÉ"), ignore_uri_case=True)
    assert matches(rule, req("/cafÉ"))
    assert not matches(rule, req("/café"))


# -- method, scheme, authority, port ------------------------------------------------------------


def test_method_scheme_authority() -> None:
    assert matches(block(method=sm(EXACT, "GET")), req(method="GET"))
    assert not matches(block(method=sm(EXACT, "GET")), req(method="POST"))
    assert matches(block(method=sm(REGEX, "GET|HEAD")), req(method="HEAD"))
    assert matches(block(scheme=sm(EXACT, "https")), req(scheme="https"))
    assert not matches(block(scheme=sm(EXACT, "https")), req(scheme="http"))
    assert matches(block(authority=sm(EXACT, "reviews:9080")), req(port=9080))
    assert matches(block(authority=sm(EXACT, "reviews")), req())
    assert matches(
        block(authority=sm(PREFIX, "api.example")), req(headers={"host": "api.example.com"})
    )
    assert not matches(block(authority=sm(REGEX, "reviews")), req(port=9080))


def test_port_defaults_by_scheme() -> None:
    assert matches(block(port=9080), req(port=9080))
    assert not matches(block(port=9080), req())
    assert matches(block(port=80), req())
    assert matches(block(port=443), req(scheme="https"))
    assert not matches(block(port=80), req(scheme="https"))
    assert default_port("https") == 443
    assert default_port("http") == 80


# -- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        (sm(EXACT, "jason"), "jason", True),
        (sm(EXACT, "jason"), "Jason", False),
        (sm(PREFIX, "ja"), "jason", True),
        (sm(PREFIX, "ja"), "bob", False),
        (sm(REGEX, "j.*n"), "jason", True),
        (sm(REGEX, "j.*n"), "jasonx", False),
        (sm(PRESENT), "", True),
        (sm(PRESENT), "anything", True),
    ],
)
def test_header_conditions(condition: StringMatch, value: str, expected: bool) -> None:
    rule = block(headers={"end-user": condition})
    assert matches(rule, req(headers={"end-user": value})) is expected
    assert not matches(rule, req())  # a condition on a missing header fails


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        (sm(EXACT, "jason"), "jason", False),
        (sm(EXACT, "jason"), "bob", True),
        (sm(PREFIX, "ja"), "jason", False),
        (sm(REGEX, "j.*n"), "bob", True),
        (sm(PRESENT), "anything", False),
    ],
)
def test_without_headers(condition: StringMatch, value: str, expected: bool) -> None:
    rule = block(without_headers={"end-user": condition})
    assert matches(rule, req(headers={"end-user": value})) is expected
    assert matches(rule, req())  # an absent header never matches, so withoutHeaders holds


def test_headers_and_without_headers_together() -> None:
    # Istio's canary-by-header idiom: testers with x-canary, except those opted out.
    rule = block(
        headers={"x-canary": sm(PRESENT)},
        without_headers={"x-opt-out": sm(EXACT, "1")},
    )
    assert matches(rule, req(headers={"x-canary": "yes"}))
    assert matches(rule, req(headers={"x-canary": "yes", "x-opt-out": "0"}))
    assert not matches(rule, req(headers={"x-canary": "yes", "x-opt-out": "1"}))
    assert not matches(rule, req(headers={"x-opt-out": "0"}))


# -- query parameters -------------------------------------------------------------------------


def test_query_params() -> None:
    exact = block(query_params={"user": sm(EXACT, "jason")})
    assert matches(exact, req(query="user=jason"))
    assert matches(exact, req(query="a=1&user=jason&user=bob"))  # the first value counts
    assert not matches(exact, req(query="user=bob&user=jason"))
    assert not matches(exact, req(query="other=jason"))
    assert not matches(exact, req())
    assert matches(block(query_params={"q": sm(EXACT, "a b")}), req(query="q=a%20b"))
    assert matches(block(query_params={"v": sm(REGEX, r"\d+")}), req(query="v=42"))
    assert not matches(block(query_params={"v": sm(REGEX, r"\d+")}), req(query="v=42a"))
    present = block(query_params={"debug": sm(PRESENT)})
    assert matches(present, req(query="debug"))
    assert matches(present, req(query="debug="))
    assert not matches(present, req(query="nodebug=1"))


# -- the caller -------------------------------------------------------------------------------


def test_source_labels_require_every_label() -> None:
    one = block(source_labels={"app": "productpage"})
    two = block(source_labels={"app": "productpage", "version": "v2"})
    caller = {"app": "productpage", "version": "v2", "extra": "x"}
    assert matches(one, req(labels=caller))
    assert matches(two, req(labels=caller))
    assert not matches(two, req(labels={"app": "productpage", "version": "v1"}))
    assert not matches(two, req(labels={"app": "productpage"}))
    assert not matches(one, req())


def test_source_namespace() -> None:
    rule = block(source_namespace="prod")
    assert matches(rule, req(namespace="prod"))
    assert not matches(rule, req(namespace="default"))


def test_every_condition_at_once() -> None:
    rule = block(
        uri=sm(PREFIX, "/api/"),
        method=sm(EXACT, "POST"),
        scheme=sm(EXACT, "http"),
        authority=sm(PREFIX, "reviews"),
        headers={"end-user": sm(EXACT, "jason")},
        without_headers={"x-skip": sm(PRESENT)},
        query_params={"v": sm(EXACT, "2")},
        port=9080,
        source_labels={"app": "productpage"},
        source_namespace="default",
    )
    good = {
        "path": "/api/x",
        "method": "POST",
        "query": "v=2",
        "port": 9080,
        "headers": {"end-user": "jason"},
        "labels": {"app": "productpage"},
    }
    assert matches(rule, req(**good))  # type: ignore[arg-type]
    spoilers: list[dict[str, object]] = [
        {"path": "/web/x"},
        {"method": "GET"},
        {"query": "v=1"},
        {"port": 80},
        {"headers": {"end-user": "bob"}},
        {"headers": {"end-user": "jason", "x-skip": "1"}},
        {"labels": {"app": "other"}},
        {"namespace": "prod"},
        {"scheme": "https"},
    ]
    for spoiler in spoilers:
        assert not matches(rule, req(**{**good, **spoiler})), spoiler  # type: ignore[arg-type]


def test_string_match_present_accepts_any_value() -> None:
    assert compile_string_match(sm(PRESENT))("")
    assert compile_string_match(sm(EXACT, "a"))("a")
    assert not compile_string_match(sm(EXACT, "a"))("A")
    assert compile_string_match(sm(EXACT, "a"), ignore_case=True)("A")


# -- the index --------------------------------------------------------------------------------


def _random_block(rng: random.Random, uri_share: float) -> HTTPMatchRequest | None:
    if rng.random() < 0.05:
        return None
    fields: dict[str, object] = {}
    roll = rng.random() / uri_share
    paths = ["/", "/a", "/a/b", "/A/B", "/ab", "/b", "/b/c", ""]
    if roll < 0.4:
        fields["uri"] = sm(PREFIX, rng.choice(paths))
    elif roll < 0.7:
        fields["uri"] = sm(EXACT, rng.choice(paths) or "/")
    elif roll < 0.8:
        fields["uri"] = sm(REGEX, rng.choice(["/a.*", "/b/c", "/[ab]"]))
    if "uri" in fields and rng.random() < 0.2:
        fields["ignore_uri_case"] = True
    if rng.random() < 0.5 or not fields:
        name = rng.choice(["end-user", "x-tenant"])
        kind = rng.choice([EXACT, EXACT, EXACT, REGEX, PRESENT, PREFIX])
        value = rng.choice(["jason", "bob", "t1"]) if kind != REGEX else "j.*"
        fields["headers"] = {name: sm(kind, "" if kind == PRESENT else value)}
    if rng.random() < 0.2:
        fields["method"] = sm(EXACT, rng.choice(["GET", "POST"]))
    return block(**fields)


def _random_request(rng: random.Random) -> RequestInfo:
    path = rng.choice(["/", "/a", "/a/b", "/A/b", "/a/b/c", "/ab", "/b", "/b/c", "/c", "/A"])
    headers = {}
    for name in ("end-user", "x-tenant"):
        if rng.random() < 0.6:
            headers[name] = rng.choice(["jason", "bob", "t1", "jim"])
    return req(path, method=rng.choice(["GET", "POST"]), headers=headers)


@pytest.mark.parametrize("uri_share", [1.0, 0.1])  # mostly by path / mostly by header
@pytest.mark.parametrize("seed", range(30))
def test_index_never_changes_the_first_match(seed: int, uri_share: float) -> None:
    rng = random.Random(seed)
    blocks = [_random_block(rng, uri_share) for _ in range(rng.randint(1, 60))]
    predicates = [compile_block(b) for b in blocks]
    index = build_index([(b, i) for i, b in enumerate(blocks)])
    for _ in range(300):
        request = _random_request(rng)
        expected = next((i for i, p in enumerate(predicates) if p(request)), None)
        candidates = index.candidates(request)
        assert list(candidates) == sorted(candidates)  # route order is kept
        found = next((i for i in candidates if predicates[i](request)), None)
        assert found == expected, (request, blocks)


def test_index_narrows_distinct_prefixes_and_header_values() -> None:
    by_path = [(block(uri=sm(PREFIX, f"/api/r{i}/")), i) for i in range(50)] + [(None, 50)]
    index = build_index(by_path)
    assert index.candidates(req("/api/r7/x")) == (7, 50)
    assert index.candidates(req("/elsewhere")) == (50,)
    by_header = [(block(headers={"end-user": sm(EXACT, f"u{i}")}), i) for i in range(50)]
    index = build_index([*by_header, (None, 50)])
    assert index.candidates(req(headers={"end-user": "u3"})) == (3, 50)
    assert index.candidates(req(headers={"end-user": "nobody"})) == (50,)
    assert index.candidates(req()) == (50,)


def test_index_keeps_nested_prefixes_and_exact_paths_in_order() -> None:
    pairs = [
        (block(uri=sm(EXACT, "/api/v1/users")), 0),
        (block(uri=sm(PREFIX, "/api/v1/")), 1),
        (block(headers={"x": sm(PRESENT)}), 2),
        (block(uri=sm(PREFIX, "/api/")), 3),
        (block(uri=sm(PREFIX, "/web/")), 4),
    ]
    index = build_index(pairs)
    assert index.candidates(req("/api/v1/users")) == (0, 1, 2, 3)
    assert index.candidates(req("/api/v1/other")) == (1, 2, 3)
    assert index.candidates(req("/api/v2")) == (2, 3)
    assert index.candidates(req("/web/x")) == (2, 4)
    assert index.candidates(req("/")) == (2,)


def test_index_folds_case_when_a_block_ignores_it() -> None:
    pairs = [
        (block(uri=sm(PREFIX, "/API/"), ignore_uri_case=True), 0),
        (block(uri=sm(PREFIX, "/web/")), 1),
        (block(uri=sm(EXACT, "/Login")), 2),
        (block(uri=sm(PREFIX, "/x/")), 3),
    ]
    index = build_index(pairs)
    predicates = [compile_block(b) for b, _ in pairs]
    for path, expected in [("/api/x", 0), ("/Web/x", None), ("/web/x", 1), ("/login", None)]:
        request = req(path)
        found = next((i for i in index.candidates(request) if predicates[i](request)), None)
        assert found == expected, path
