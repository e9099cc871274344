"""Istio's ``HTTPMatchRequest`` compiled into predicates over :class:`RequestInfo`.

Semantics (Istio's, as Envoy implements them):

* the blocks of a route's ``match`` list are ORed, the conditions inside one block are ANDed,
  and an empty list matches every request; the first route that matches wins (see
  :mod:`meshware.routing.table`);
* ``uri`` is matched on the path without the query string: ``exact``, ``prefix`` (a plain
  string prefix, not path-segment aware) or ``regex`` (RE2 full match, so ``re.fullmatch``).
  ``ignore_uri_case`` makes ``exact`` and ``prefix`` ASCII case-insensitive, as Envoy's
  ``case_sensitive: false``; it does not apply to ``regex``;
* ``scheme``, ``method`` and ``authority`` (``host[:port]`` as the Host header carries it) are
  case-sensitive string matches;
* ``headers``: the header must be present and its value must match; ``{}`` (kind
  ``present``) only requires presence. A condition on a missing header fails;
* ``without_headers``: the request matches when the header does *not* match the condition,
  which includes the header being absent (for ``{}``: the header must be absent);
* ``query_params``: the first value of the parameter must match (``exact``/``regex``) or the
  parameter must merely exist (``present``); a missing parameter fails;
* ``port``: the request's port, 80 or 443 by scheme when the URL names none;
* ``source_labels``: every listed label must be carried, with that value, by the calling
  instance; ``source_namespace``: the caller's namespace.

Why predicates are closures built once: every outbound request runs the route list, so all
work that depends only on configuration (regex compilation, case folding of match values,
choosing the cheapest test order) is done in :func:`compile_block`, and the per-request call
does attribute loads, one string operation and one comparison per condition.

Why an index: a CPython function call costs 100-200 ns on the machines we target, so testing
100 routes one by one cannot meet the 10 µs budget for a routing decision. A route table
rarely needs that, though: most blocks pin the request to a path (``uri`` exact/prefix) or to
an exact header value, and :class:`MatchIndex` uses the most discriminating of those to hand
back, with one or a few dict lookups, the *ordered* sub-list of blocks that could match. It is
a conservative filter (a superset of the matching blocks, in route order), so first-match-wins
is preserved and every candidate is still tested in full.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Generic, TypeVar
from urllib.parse import parse_qsl

from meshware.config.model.common import StringMatch
from meshware.config.model.networking import HTTPMatchRequest
from meshware.routing.request import RequestInfo

__all__ = [
    "MatchIndex",
    "Predicate",
    "always",
    "build_index",
    "compile_block",
    "compile_matches",
    "compile_string_match",
    "default_port",
]

T = TypeVar("T")

Predicate = Callable[[RequestInfo], bool]
"""A compiled condition over a request."""

StringPredicate = Callable[[str], bool]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(text: str) -> str:
    """ASCII-only lower case (Envoy's case-insensitive path match ignores other letters).

    ``str.lower`` is used when it is equivalent (pure ASCII), because it is much faster.
    """
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _regex(pattern: str) -> re.Pattern[str]:
    """Compile an Istio (RE2) regex. ``re.ASCII`` gives ``\\d``, ``\\w``, ``\\s`` and ``\\b`` RE2's
    ASCII meaning; the parser already rejected the syntax RE2 lacks (backreferences, ...)."""
    return re.compile(pattern, re.ASCII)


def default_port(scheme: str) -> int:
    """The port a URL without one uses: 443 for https (and wss), 80 otherwise."""
    return 443 if scheme in ("https", "wss") else 80


def always(_request: RequestInfo) -> bool:
    """The predicate of a route without ``match``: every request matches."""
    return True


# -- string matches ---------------------------------------------------------------------------


def compile_string_match(match: StringMatch, *, ignore_case: bool = False) -> StringPredicate:
    """A predicate over a present value. ``present`` accepts every value (the caller checks
    presence); ``ignore_case`` applies to ``exact`` and ``prefix`` only, as in Envoy."""
    kind = match.kind
    value = match.value
    if kind == "present":
        return _accept
    if kind == "regex":
        return _full_match(_regex(value))
    if ignore_case:
        folded = _fold(value)
        if kind == "exact":
            return lambda text: _fold(text) == folded
        return lambda text: _fold(text).startswith(folded)
    if kind == "exact":
        return value.__eq__
    return lambda text: text.startswith(value)


def _accept(_text: str) -> bool:
    return True


def _full_match(pattern: re.Pattern[str]) -> StringPredicate:
    fullmatch = pattern.fullmatch
    return lambda text: fullmatch(text) is not None


# -- one condition each -----------------------------------------------------------------------


def _uri(match: StringMatch, ignore_case: bool) -> Predicate:
    value = match.value
    if match.kind == "exact" and not ignore_case:
        return lambda request: request.path == value
    if match.kind == "prefix" and not ignore_case:
        return lambda request: request.path.startswith(value)
    if match.kind == "regex":
        fullmatch = _regex(value).fullmatch
        return lambda request: fullmatch(request.path) is not None
    test = compile_string_match(match, ignore_case=ignore_case)
    return lambda request: test(request.path)


def _method(match: StringMatch) -> Predicate:
    if match.kind == "exact":
        value = match.value
        return lambda request: request.method == value
    test = compile_string_match(match)
    return lambda request: test(request.method)


def _scheme(match: StringMatch) -> Predicate:
    test = compile_string_match(match)
    return lambda request: test(request.scheme)


def _authority(match: StringMatch) -> Predicate:
    test = compile_string_match(match)
    return lambda request: test(request.authority)


def _port(port: int) -> Predicate:
    def check(request: RequestInfo) -> bool:
        actual = request.port
        if actual is None:
            actual = default_port(request.scheme)
        return actual == port

    return check


def _header(name: str, match: StringMatch) -> Predicate:
    if match.kind == "present":
        return lambda request: name in request.headers
    if match.kind == "exact":
        value = match.value

        def exact(request: RequestInfo) -> bool:
            return request.headers.get(name) == value  # None (absent) never equals a str

        return exact
    if match.kind == "regex":
        fullmatch = _regex(match.value).fullmatch

        def regex(request: RequestInfo) -> bool:
            actual = request.headers.get(name)
            return actual is not None and fullmatch(actual) is not None

        return regex
    test = compile_string_match(match)

    def check(request: RequestInfo) -> bool:
        actual = request.headers.get(name)
        return actual is not None and test(actual)

    return check


def _without_header(name: str, match: StringMatch) -> Predicate:
    if match.kind == "present":
        return lambda request: name not in request.headers
    test = compile_string_match(match)

    def check(request: RequestInfo) -> bool:
        actual = request.headers.get(name)
        return actual is None or not test(actual)

    return check


@lru_cache(maxsize=1024)
def _query(query: str) -> Mapping[str, str]:
    """Parsed query (first value of each name), memoised: several routes may test the same
    request's parameters, and the same URLs recur."""
    out: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(key, value)
    return MappingProxyType(out)


def _query_param(name: str, match: StringMatch) -> Predicate:
    if match.kind == "present":
        return lambda request: name in _query(request.query)
    test = compile_string_match(match)

    def check(request: RequestInfo) -> bool:
        actual = _query(request.query).get(name)
        return actual is not None and test(actual)

    return check


def _source_labels(labels: Mapping[str, str]) -> Predicate:
    items = tuple(labels.items())
    if len(items) == 1:
        ((key, value),) = items
        return lambda request: request.source_labels.get(key) == value

    def check(request: RequestInfo) -> bool:
        carried = request.source_labels
        for key, value in items:  # noqa: SIM110 (all() would allocate a generator per call)
            if carried.get(key) != value:
                return False
        return True

    return check


def _source_namespace(namespace: str) -> Predicate:
    return lambda request: request.source_namespace == namespace


# -- blocks -----------------------------------------------------------------------------------


def conditions(block: HTTPMatchRequest) -> list[Predicate]:
    """The block's conditions as predicates, cheapest and most selective first."""
    out: list[Predicate] = []
    if block.uri is not None:
        out.append(_uri(block.uri, block.ignore_uri_case))
    if block.method is not None:
        out.append(_method(block.method))
    if block.port is not None:
        out.append(_port(block.port))
    if block.scheme is not None:
        out.append(_scheme(block.scheme))
    if block.source_namespace:
        out.append(_source_namespace(block.source_namespace))
    out.extend(_header(name, match) for name, match in block.headers.items())
    out.extend(_without_header(name, match) for name, match in block.without_headers.items())
    if block.authority is not None:
        out.append(_authority(block.authority))
    if block.source_labels:
        out.append(_source_labels(block.source_labels))
    out.extend(_query_param(name, match) for name, match in block.query_params.items())
    return out


def _all_of(tests: Sequence[Predicate]) -> Predicate:
    if not tests:
        return always
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda request: first(request) and second(request)
    ordered = tuple(tests)

    def check(request: RequestInfo) -> bool:
        for test in ordered:  # noqa: SIM110 (all() would allocate a generator per call)
            if not test(request):
                return False
        return True

    return check


def _any_of(tests: Sequence[Predicate]) -> Predicate:
    if len(tests) == 1:
        return tests[0]
    alternatives = tuple(tests)

    def check(request: RequestInfo) -> bool:
        for test in alternatives:  # noqa: SIM110 (any() would allocate a generator per call)
            if test(request):
                return True
        return False

    return check


def compile_block(block: HTTPMatchRequest | None) -> Predicate:
    """One match block (conditions ANDed); None, a route without ``match``, matches all."""
    if block is None:
        return always
    return _all_of(conditions(block))


def compile_matches(blocks: Sequence[HTTPMatchRequest]) -> Predicate:
    """A route's whole ``match`` list: blocks ORed; an empty list matches every request."""
    if not blocks:
        return always
    return _any_of([compile_block(block) for block in blocks])


# -- the index --------------------------------------------------------------------------------


class MatchIndex(ABC, Generic[T]):
    """The items whose match block *could* match a request, in their original order.

    Built from ``(block, item)`` pairs in route order (a route with several blocks gives
    several consecutive pairs; a block None matches everything). :meth:`candidates` returns a
    precomputed tuple: no allocation per request. The caller must still test each candidate.
    """

    __slots__ = ()

    @abstractmethod
    def candidates(self, request: RequestInfo) -> tuple[T, ...]:
        """Items in order, a superset of those whose block matches ``request``."""

    @property
    @abstractmethod
    def cost(self) -> tuple[int, int]:
        """(largest candidate list, total of candidate lists): lower is better."""


_MIN_INDEXED = 4
"""Below this many blocks a dict lookup costs about as much as testing them all."""


def build_index(pairs: Sequence[tuple[HTTPMatchRequest | None, T]]) -> MatchIndex[T]:
    """The index that leaves the fewest candidates in the worst case (or a plain list).

    ``pairs`` are ``(block, item)`` in route order: a route with several blocks gives several
    consecutive pairs, and a route without ``match`` gives one pair with block None.
    """
    everything: MatchIndex[T] = _Linear(tuple(item for _, item in pairs))
    if len(pairs) < _MIN_INDEXED:
        return everything
    options: list[MatchIndex[T]] = [everything]
    path = _path_index(pairs)
    if path is not None:
        options.append(path)
    options.extend(_header_index(pairs, name) for name in sorted(_exact_header_names(pairs)))
    return min(options, key=lambda index: index.cost)


class _Linear(MatchIndex[T]):
    __slots__ = ("_items",)

    def __init__(self, items: tuple[T, ...]) -> None:
        self._items = items

    def candidates(self, request: RequestInfo) -> tuple[T, ...]:
        return self._items

    @property
    def cost(self) -> tuple[int, int]:
        return (len(self._items), len(self._items))


def _path_gate(block: HTTPMatchRequest | None) -> tuple[str, str, bool] | None:
    """(kind, value, case-insensitive) when the block only matches paths with that key."""
    if block is None or block.uri is None or block.uri.kind not in ("exact", "prefix"):
        return None
    return (block.uri.kind, block.uri.value, block.ignore_uri_case)


def _exact_header_names(pairs: Sequence[tuple[HTTPMatchRequest | None, object]]) -> set[str]:
    return {
        name
        for block, _ in pairs
        if block is not None
        for name, match in block.headers.items()
        if match.kind == "exact"
    }


def _select(
    pairs: Sequence[tuple[HTTPMatchRequest | None, T]],
    admitted: Callable[[int], bool],
) -> tuple[T, ...]:
    return tuple(item for i, (_, item) in enumerate(pairs) if admitted(i))


class _PathIndex(MatchIndex[T]):
    """Gate on ``uri`` exact/prefix: an exact-path dict, then the longest matching prefix.

    For each prefix key K the candidate list holds every block gated by a prefix of K (all of
    them are prefixes of any path that starts with K) plus the ungated blocks; for each exact
    key E, the blocks gated by E and by every prefix of E. A path's candidates are then those
    of its exact key if any, else of its longest prefix key, else the ungated blocks.
    When any gated block ignores case, keys and paths are ASCII-folded: the filter stays a
    superset of the case-sensitive matches.
    """

    __slots__ = ("_exact", "_fallback", "_fold", "_levels", "_sizes")

    def __init__(
        self,
        fold: bool,
        exact: dict[str, tuple[T, ...]],
        levels: tuple[tuple[int, dict[str, tuple[T, ...]]], ...],
        fallback: tuple[T, ...],
    ) -> None:
        self._fold = fold
        self._exact = exact
        self._levels = levels
        self._fallback = fallback
        lists = [fallback, *exact.values()]
        lists.extend(hit for _, table in levels for hit in table.values())
        self._sizes = _sizes(lists)

    def candidates(self, request: RequestInfo) -> tuple[T, ...]:
        path = request.path
        if self._fold:
            path = _fold(path)
        hit = self._exact.get(path)
        if hit is not None:
            return hit
        size = len(path)
        for length, table in self._levels:
            if length <= size:
                hit = table.get(path[:length])
                if hit is not None:
                    return hit
        return self._fallback

    @property
    def cost(self) -> tuple[int, int]:
        return self._sizes


def _path_index(pairs: Sequence[tuple[HTTPMatchRequest | None, T]]) -> _PathIndex[T] | None:
    gates = [_path_gate(block) for block, _ in pairs]
    if all(gate is None for gate in gates):
        return None
    fold = any(gate is not None and gate[2] for gate in gates)
    keys: list[tuple[str, str] | None] = [
        None if gate is None else (gate[0], _fold(gate[1]) if fold else gate[1]) for gate in gates
    ]

    def reaching(path: str, *, exact: bool) -> tuple[T, ...]:
        """Blocks that may match ``path`` (``exact``) or any path starting with it."""

        def admitted(i: int) -> bool:
            key = keys[i]
            if key is None:
                return True
            kind, value = key
            if kind == "prefix":
                return path.startswith(value)
            return exact and path == value

        return _select(pairs, admitted)

    levels: dict[int, dict[str, tuple[T, ...]]] = {}
    exact: dict[str, tuple[T, ...]] = {}
    for key in keys:
        if key is None:
            continue
        kind, value = key
        if kind == "prefix":
            levels.setdefault(len(value), {})[value] = reaching(value, exact=False)
        else:
            exact[value] = reaching(value, exact=True)
    return _PathIndex(
        fold=fold,
        exact=exact,
        levels=tuple(sorted(levels.items(), reverse=True)),
        fallback=_select(pairs, lambda i: keys[i] is None),
    )


class _HeaderIndex(MatchIndex[T]):
    """Gate on one header's exact value (A/B routing by user, tenant, ...)."""

    __slots__ = ("_fallback", "_name", "_sizes", "_table")

    def __init__(self, name: str, table: dict[str, tuple[T, ...]], fallback: tuple[T, ...]) -> None:
        self._name = name
        self._table = table
        self._fallback = fallback
        self._sizes = _sizes([fallback, *table.values()])

    def candidates(self, request: RequestInfo) -> tuple[T, ...]:
        value = request.headers.get(self._name)
        if value is None:
            return self._fallback
        return self._table.get(value, self._fallback)

    @property
    def cost(self) -> tuple[int, int]:
        return self._sizes


def _header_index(pairs: Sequence[tuple[HTTPMatchRequest | None, T]], name: str) -> _HeaderIndex[T]:
    wanted: list[str | None] = []
    for block, _ in pairs:
        match = block.headers.get(name) if block is not None else None
        wanted.append(match.value if match is not None and match.kind == "exact" else None)

    def reaching(value: str) -> tuple[T, ...]:
        return _select(pairs, lambda i: wanted[i] is None or wanted[i] == value)

    table = {value: reaching(value) for value in wanted if value is not None}
    return _HeaderIndex(name, table, _select(pairs, lambda i: wanted[i] is None))


def _sizes(lists: Sequence[tuple[object, ...]]) -> tuple[int, int]:
    return (max(len(hit) for hit in lists), sum(len(hit) for hit in lists))
