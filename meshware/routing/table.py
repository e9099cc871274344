"""The compiled routing table: one immutable object per config version, read without locks.

:meth:`RouteTable.compile` turns a :class:`MeshConfig` into everything the request path
needs, once: VirtualService hosts canonicalised and grouped, every match block compiled into
a predicate (:mod:`meshware.routing.match`), the blocks indexed by path or header so a request
tests only those that could match, every route's weights compiled into a
:class:`~meshware.routing.select.WeightedPicker`, and every possible :class:`RouteDecision`
built in advance, so a decision allocates nothing but the cache key of its host. The config
watcher swaps in a new table when the config changes; a request keeps the table it started
with.

How a request is routed (Istio's sidecar semantics):

1. its logical host is canonicalised in the caller's namespace (``reviews`` from namespace
   ``default`` is ``reviews.default.svc.cluster.local``) and looked up among the
   VirtualService hosts visible from that namespace (``exportTo``): an exact host first,
   then the most specific ``*.suffix`` wildcard, then ``*``;
2. no VirtualService: the request goes to the host itself, every instance (``subset ""``),
   ``route`` None;
3. otherwise the first HTTP route with a matching block wins and one of its weighted
   destinations is picked: sticky by the ``meshware.io/sticky`` key when the request carries
   it, weighted random otherwise;
4. a VirtualService covers the host but no route matches: :meth:`RouteTable.decide` returns
   None, Envoy's "NR" (404 no route); the caller, which has the HTTP request, raises
   :class:`~meshware.errors.NoRouteError`.

DestinationRules and ServiceEntries are looked up by canonical host, exact host first, then
the most specific wildcard. Lookups of those ignore ``exportTo`` (the caller's namespace is
not part of their API); a VirtualService's ``exportTo`` is honoured. A VirtualService without
``http`` routes does not cover its hosts for HTTP traffic.

The only state that changes after :meth:`RouteTable.compile` is a few bounded memos (request
host → routes, host → DestinationRule, host → ServiceEntry). They cache pure functions of the
immutable table, so two threads racing on a miss only compute the same answer twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar

from meshware.config.model.common import EMPTY_MAP, Resource, canonical_host
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.networking import (
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRoute,
    RouteDestination,
    ServiceEntry,
    StickyKey,
    TrafficPolicy,
    VirtualService,
)
from meshware.routing.match import MatchIndex, Predicate, build_index, compile_block
from meshware.routing.request import RequestInfo
from meshware.routing.select import WeightedPicker, sticky_value

__all__ = ["RETRY_NON_IDEMPOTENT_ANNOTATION", "RouteDecision", "RouteTable"]

RETRY_NON_IDEMPOTENT_ANNOTATION = "meshware.io/retry-non-idempotent"
"""VirtualService annotation (``"true"``) opting its routes in to retrying non-idempotent
requests on conditions where the upstream may have seen them."""

R = TypeVar("R", bound=Resource[Any])

_MEMO_LIMIT = 4096
"""Distinct (host, namespace) pairs remembered per table; the memo is cleared beyond it."""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes. Built at compile time and shared: never mutate, compare by value.

    ``port`` is the destination's port from the route; None means "the request's own port".
    ``route_name`` is the route's ``name``, or ``http[i]`` (its position) when it has none.
    ``matched`` is the match block that matched (None for a route without ``match``), which
    ``rewrite.uri`` needs to replace a matched prefix. ``route_destination`` is the weighted
    destination picked, with its host canonicalised (its ``headers`` apply to this request).
    """

    service_host: str
    destination: Destination
    subset: str
    port: int | None
    route: HTTPRoute | None
    route_name: str
    virtual_service: str
    sticky: bool
    matched: HTTPMatchRequest | None = None
    route_destination: RouteDestination | None = None
    retry_non_idempotent: bool = False


class _Fixed:
    """A host no VirtualService covers: always the same decision."""

    __slots__ = ("decision",)

    def __init__(self, decision: RouteDecision) -> None:
        self.decision = decision

    def decide(self, request: RequestInfo, rng: random.Random) -> RouteDecision | None:
        return self.decision


class _Entry:
    """One match block of one route, with that route's picker and prebuilt decisions."""

    __slots__ = ("decisions", "picker", "sticky_decisions")

    def __init__(
        self,
        picker: WeightedPicker,
        decisions: tuple[RouteDecision, ...],
        sticky_decisions: tuple[RouteDecision, ...],
    ) -> None:
        self.picker = picker
        self.decisions = decisions
        self.sticky_decisions = sticky_decisions


class _Routes:
    """The compiled HTTP routes of one VirtualService (shared by all of its hosts)."""

    __slots__ = ("index", "sticky", "virtual_service")

    def __init__(
        self,
        virtual_service: VirtualService,
        index: MatchIndex[tuple[Predicate, _Entry]],
        sticky: StickyKey | None,
    ) -> None:
        self.virtual_service = virtual_service
        self.index = index
        self.sticky = sticky

    def decide(self, request: RequestInfo, rng: random.Random) -> RouteDecision | None:
        for test, entry in self.index.candidates(request):
            if test(request):
                picker = entry.picker
                sticky = self.sticky
                if sticky is not None and picker.multiple:
                    key = sticky_value(request, sticky)
                    if key is not None:
                        return entry.sticky_decisions[picker.pick_sticky(key)]
                return entry.decisions[picker.pick(rng)]
        return None

    @classmethod
    def compile(cls, vs: VirtualService) -> _Routes:
        namespace = vs.metadata.namespace
        unsafe = (
            vs.metadata.annotations.get(RETRY_NON_IDEMPOTENT_ANNOTATION, "").strip().lower()
            == "true"
        )
        pairs: list[tuple[HTTPMatchRequest | None, tuple[Predicate, _Entry]]] = []
        for position, route in enumerate(vs.spec.http):
            weighted = tuple(
                replace(
                    d,
                    destination=replace(
                        d.destination, host=canonical_host(d.destination.host, namespace)
                    ),
                )
                for d in route.route
            )
            if not weighted:
                continue  # nothing to send to (the parser does not admit it)
            picker = WeightedPicker(weighted)
            blocks: tuple[HTTPMatchRequest | None, ...] = route.match or (None,)
            for block in blocks:
                plain = _decisions(
                    weighted,
                    route=route,
                    route_name=route.name or f"http[{position}]",
                    virtual_service=vs.metadata.name,
                    matched=block,
                    retry_non_idempotent=unsafe,
                )
                entry = _Entry(picker, plain, tuple(replace(d, sticky=True) for d in plain))
                pairs.append((block, (compile_block(block), entry)))
        return cls(vs, build_index(pairs), vs.sticky)


def _decisions(
    weighted: Iterable[RouteDestination],
    *,
    route: HTTPRoute,
    route_name: str,
    virtual_service: str,
    matched: HTTPMatchRequest | None,
    retry_non_idempotent: bool,
) -> tuple[RouteDecision, ...]:
    """One (non-sticky) decision per weighted destination, hosts already canonical."""
    return tuple(
        RouteDecision(
            service_host=d.destination.host,
            destination=d.destination,
            subset=d.destination.subset,
            port=d.destination.port,
            route=route,
            route_name=route_name,
            virtual_service=virtual_service,
            sticky=False,
            matched=matched,
            route_destination=d,
            retry_non_idempotent=retry_non_idempotent,
        )
        for d in weighted
    )


class _HostMap(Generic[R]):
    """Resources by canonical host: exact hosts, then wildcards from most specific to ``*``."""

    __slots__ = ("_exact", "_wildcards")

    def __init__(self, entries: Iterable[tuple[str, R]]) -> None:
        exact: dict[str, list[R]] = {}
        wildcards: dict[str, list[R]] = {}
        for host, resource in entries:
            if host == "*":
                wildcards.setdefault("", []).append(resource)
            elif host.startswith("*."):
                wildcards.setdefault(host[1:], []).append(resource)
            else:
                exact.setdefault(host, []).append(resource)
        self._exact = {host: tuple(found) for host, found in exact.items()}
        # Longest suffix first: "*.a.example.com" before "*.example.com" before "*".
        self._wildcards = tuple(
            (suffix, tuple(found))
            for suffix, found in sorted(wildcards.items(), key=lambda kv: (-len(kv[0]), kv[0]))
        )

    def lookup(self, host: str) -> Iterable[R]:
        """Every resource covering ``host``, most specific host first (config order within)."""
        yield from self._exact.get(host, ())
        for suffix, found in self._wildcards:
            if host.endswith(suffix):
                yield from found

    def covers(self, host: str) -> bool:
        return next(iter(self.lookup(host)), None) is not None

    def resources(self) -> Iterable[R]:
        """Every resource once per host it was registered under."""
        for found in self._exact.values():
            yield from found
        for _, found in self._wildcards:
            yield from found


class _Unknown:
    """Marks a memo miss (None is a remembered answer)."""


_UNKNOWN = _Unknown()

K = TypeVar("K")
V = TypeVar("V")


def _remember(memo: dict[K, V], key: K, value: V) -> None:
    """Store in a bounded memo: past the limit it starts again (the table never grows
    without bound, whatever hosts callers make up)."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


class _RuleChoice:
    """The DestinationRules covering one host, ready to choose by the caller's labels."""

    __slots__ = ("default", "selective", "unselective")

    def __init__(
        self,
        default: DestinationRule,
        unselective: DestinationRule | None,
        selective: tuple[tuple[tuple[tuple[str, str], ...], DestinationRule], ...],
    ) -> None:
        self.default = default
        self.unselective = unselective
        self.selective = selective

    @classmethod
    def of(cls, rules: tuple[DestinationRule, ...]) -> _RuleChoice | None:
        if not rules:
            return None
        unselective = next((r for r in rules if not _selector(r)), None)
        selective = tuple((_selector(r), r) for r in rules if _selector(r))
        return cls(unselective or rules[0], unselective, selective)

    def pick(self, labels: Mapping[str, str] | None) -> DestinationRule | None:
        if labels is None:
            return self.default
        for selector, rule in self.selective:
            if all(labels.get(key) == value for key, value in selector):
                return rule
        return self.unselective


def _selector(rule: DestinationRule) -> tuple[tuple[str, str], ...]:
    selector = rule.spec.workload_selector
    return () if selector is None else tuple(selector.match_labels.items())


def _visible(export_to: tuple[str, ...], own: str, namespace: str) -> bool:
    """Istio's ``exportTo``: empty or ``*`` is everyone, ``.`` the resource's own namespace."""
    if not export_to or "*" in export_to or namespace in export_to:
        return True
    return "." in export_to and namespace == own


class RouteTable:
    """Every routing decision for one config version. Immutable; safe to share across threads.

    Build it with :meth:`compile`; :attr:`EMPTY` routes every host to itself.
    """

    EMPTY: ClassVar[RouteTable]

    __slots__ = (
        "_entries",
        "_entry_memo",
        "_known",
        "_memo",
        "_policies",
        "_routes",
        "_rule_memo",
        "_rules",
        "_virtual_services",
    )

    def __init__(
        self,
        virtual_services: _HostMap[VirtualService],
        routes: Mapping[tuple[str, str], _Routes],
        rules: _HostMap[DestinationRule],
        entries: _HostMap[ServiceEntry],
        known_hosts: frozenset[str],
    ) -> None:
        self._virtual_services = virtual_services
        self._routes = routes
        self._rules = rules
        self._entries = entries
        self._known = known_hosts
        self._policies: dict[tuple[str, str, str], TrafficPolicy] = {}
        for rule in rules.resources():
            namespace, name = rule.metadata.namespace, rule.metadata.name
            for subset in ("", *(s.name for s in rule.spec.subsets)):
                self._policies[(namespace, name, subset)] = rule.spec.policy_for(subset)
        # (request host, caller namespace) → what routes it. Filled on first use of each pair:
        # a pure function of the immutable fields above, so races only repeat work.
        self._memo: dict[tuple[str, str], _Routes | _Fixed] = {}
        self._rule_memo: dict[str, _RuleChoice | _Unknown | None] = {}
        self._entry_memo: dict[str, ServiceEntry | _Unknown | None] = {}

    @classmethod
    def compile(cls, config: MeshConfig) -> RouteTable:
        """Compile every routing rule of ``config`` (already validated) into a table."""
        virtual_services = [vs for vs in config.of(VirtualService) if vs.spec.http]
        routes = {
            (vs.metadata.namespace, vs.metadata.name): _Routes.compile(vs)
            for vs in virtual_services
        }
        vs_hosts = [(host, vs) for vs in virtual_services for host in vs.canonical_hosts]
        rules = [(rule.canonical_host, rule) for rule in config.of(DestinationRule)]
        entries = [
            (canonical_host(host, entry.metadata.namespace), entry)
            for entry in config.of(ServiceEntry)
            for host in entry.spec.hosts
        ]
        known = frozenset(host for host, _ in (*vs_hosts, *rules, *entries))
        return cls(_HostMap(vs_hosts), routes, _HostMap(rules), _HostMap(entries), known)

    # -- the request path ----------------------------------------------------------------------

    def decide(self, request: RequestInfo, rng: random.Random) -> RouteDecision | None:
        """Route ``request``; None means a VirtualService covers its host but no route matched
        (Envoy's 404 "NR": raise :class:`~meshware.errors.NoRouteError`).

        ``rng`` is only used for a weighted random pick among several destinations.
        """
        key = (request.host, request.source_namespace)
        target = self._memo.get(key)
        if target is None:
            target = self._resolve(*key)
        return target.decide(request, rng)

    def _resolve(self, host: str, namespace: str) -> _Routes | _Fixed:
        canonical = canonical_host(host, namespace)
        target: _Routes | _Fixed | None = None
        for vs in self._virtual_services.lookup(canonical):
            if _visible(vs.spec.export_to, vs.metadata.namespace, namespace):
                target = self._routes[(vs.metadata.namespace, vs.metadata.name)]
                break
        if target is None:
            destination = Destination(host=canonical)
            target = _Fixed(
                RouteDecision(
                    service_host=canonical,
                    destination=destination,
                    subset="",
                    port=None,
                    route=None,
                    route_name="",
                    virtual_service="",
                    sticky=False,
                )
            )
        _remember(self._memo, (host, namespace), target)
        return target

    # -- lookups by canonical host ---------------------------------------------------------------

    @property
    def known_hosts(self) -> frozenset[str]:
        """Canonical hosts (wildcard patterns included) of every VirtualService,
        DestinationRule and ServiceEntry; :meth:`covers` also resolves wildcards."""
        return self._known

    def covers(self, canonical_host: str) -> bool:
        """True when any VirtualService, DestinationRule or ServiceEntry host (wildcards
        included) covers ``canonical_host``."""
        return (
            canonical_host in self.known_hosts
            or self._virtual_services.covers(canonical_host)
            or self._rules.covers(canonical_host)
            or self._entries.covers(canonical_host)
        )

    def virtual_service(self, canonical_host: str, namespace: str = "") -> VirtualService | None:
        """The VirtualService routing ``canonical_host`` (as seen from ``namespace``; empty
        means ignore ``exportTo``)."""
        for vs in self._virtual_services.lookup(canonical_host):
            if not namespace or _visible(vs.spec.export_to, vs.metadata.namespace, namespace):
                return vs
        return None

    def destination_rule(
        self, canonical_host: str, *, source_labels: Mapping[str, str] | None = None
    ) -> DestinationRule | None:
        """The DestinationRule for ``canonical_host``, most specific host first.

        Among rules for the same host, ``source_labels`` (the calling instance's labels)
        picks the one whose ``workloadSelector`` selects the caller, else one without a
        selector (Istio's rule). Without ``source_labels`` a rule without a selector is
        preferred, then the first rule. Memoised per host: cheap on the request path.
        """
        choice = self._rule_memo.get(canonical_host, _UNKNOWN)
        if choice is _UNKNOWN:
            choice = _RuleChoice.of(tuple(self._rules.lookup(canonical_host)))
            _remember(self._rule_memo, canonical_host, choice)
        if choice is None or isinstance(choice, _Unknown):
            return None
        return choice.pick(source_labels)

    def subset_labels(
        self,
        canonical_host: str,
        subset: str,
        *,
        source_labels: Mapping[str, str] | None = None,
    ) -> Mapping[str, str] | None:
        """Labels selecting ``subset`` of ``canonical_host``; None when no DestinationRule
        defines that subset. ``subset`` "" (every instance) has no labels to match."""
        if not subset:
            return EMPTY_MAP
        rule = self.destination_rule(canonical_host, source_labels=source_labels)
        if rule is None:
            return None
        found = rule.spec.subset(subset)
        return None if found is None else found.labels

    def traffic_policy(
        self,
        canonical_host: str,
        subset: str = "",
        *,
        source_labels: Mapping[str, str] | None = None,
    ) -> TrafficPolicy | None:
        """The effective policy for ``subset`` of ``canonical_host`` (the host-level policy
        merged with the subset's, as ``DestinationRuleSpec.policy_for``); None without a
        DestinationRule. An unknown subset gets the host-level policy."""
        rule = self.destination_rule(canonical_host, source_labels=source_labels)
        if rule is None:
            return None
        namespace, name = rule.metadata.namespace, rule.metadata.name
        policy = self._policies.get((namespace, name, subset))
        return policy if policy is not None else self._policies[(namespace, name, "")]

    def service_entry(self, canonical_host: str) -> ServiceEntry | None:
        """The ServiceEntry declaring ``canonical_host`` (most specific host first)."""
        entry = self._entry_memo.get(canonical_host, _UNKNOWN)
        if entry is _UNKNOWN:
            entry = next(iter(self._entries.lookup(canonical_host)), None)
            _remember(self._entry_memo, canonical_host, entry)
        return None if isinstance(entry, _Unknown) else entry


RouteTable.EMPTY = RouteTable.compile(MeshConfig())
