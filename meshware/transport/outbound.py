"""The decision core shared by the sync and async mesh transports (no I/O here).

For one logical request it answers, in order: is this a mesh host at all (or passthrough, or
blocked egress)? which route and destination (VirtualService)? which fault, mirrors, header
and URI rewrites, timeout and retry policy apply? then, per attempt: which endpoint
(subset filter, draining, outlier ejection, load balancer)? and after each attempt: was it a
success, is a retry allowed (policy, method, body, budget, deadline) and after which backoff?

Per-destination runtime state (balancer, outlier detector, admission counters, retry budget)
lives in :class:`DestinationState`, created on first use and rebuilt only when the
destination's traffic policy changes, so ejections survive unrelated config pushes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import httpx

from meshware.config.discovery import Endpoint, EndpointTable
from meshware.config.model.common import canonical_host
from meshware.config.model.networking import (
    Destination,
    HeaderOperations,
    HTTPRoute,
    TrafficPolicy,
)
from meshware.errors import (
    EgressBlockedError,
    NoHealthyUpstreamError,
    NoRouteError,
    UpstreamTimeoutError,
)
from meshware.resilience.fault import FaultDecision, decide_fault
from meshware.resilience.limits import Admission, ConnectionLimits
from meshware.resilience.mirror import decide_mirrors
from meshware.resilience.outlier import OutlierDetector
from meshware.resilience.retry import Outcome, RetryBudget, RetryPolicy, can_replay
from meshware.routing.balance import Balancer, hash_key_of, make_balancer
from meshware.routing.request import Field, HeaderFields, RequestInfo
from meshware.routing.table import RouteDecision, RouteTable
from meshware.security.tls import WorkloadTLS
from meshware.telemetry.tracing import Tracer

if TYPE_CHECKING:
    from meshware.telemetry.access_log import AccessLog
    from meshware.telemetry.runtime import MeshMetrics

OutboundPolicy = Literal["ALLOW_ANY", "REGISTRY_ONLY"]
MAX_BUFFERED_RESPONSE = 64 * 1024
_MID_BODY_RESET = Outcome("reset", None, sent=True)


class MeshView(Protocol):
    """What the transports need from the mesh runtime (satisfied by :class:`meshware.Mesh`)."""

    @property
    def route_table(self) -> RouteTable: ...

    @property
    def endpoint_table(self) -> EndpointTable: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def namespace(self) -> str: ...

    @property
    def outbound_traffic_policy(self) -> OutboundPolicy: ...

    @property
    def tracer(self) -> Tracer | None: ...

    @property
    def tls(self) -> WorkloadTLS | None: ...

    @property
    def metrics(self) -> MeshMetrics | None: ...

    @property
    def access_log(self) -> AccessLog | None: ...


class DestinationState:
    """Runtime state of one (service, subset): balancer, ejections, admission, retry budget."""

    def __init__(
        self, policy: TrafficPolicy | None, *, rng: random.Random, clock: Callable[[], float]
    ) -> None:
        self.policy = policy
        lb = policy.load_balancer if policy is not None else None
        self.balancer: Balancer = make_balancer(lb, rng)
        outlier = policy.outlier_detection if policy is not None else None
        self.outlier: OutlierDetector | None = (
            OutlierDetector(outlier, clock=clock) if outlier is not None else None
        )
        pool = policy.connection_pool if policy is not None else None
        self.limits = ConnectionLimits.from_policy(pool)
        self.admission = Admission(self.limits)
        self.budget = RetryBudget(clock=clock)
        self.members: frozenset[str] = frozenset()
        self.next_sweep = 0.0
        self.lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class RouteExtras:
    """What depends only on the route decision: computed once per compiled decision."""

    retry: RetryPolicy
    request_headers: tuple[HeaderOperations, ...]
    response_headers: tuple[HeaderOperations, ...]
    timeout: float | None


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """The endpoints of one (service, subset) under one registry and config snapshot."""

    endpoints: tuple[Endpoint, ...]
    by_address: Mapping[str, Endpoint]
    ready: tuple[str, ...]
    """Addresses of endpoints that are not draining, in a stable order."""
    members: frozenset[str]
    registered: bool = False
    """The service has mesh workloads in the registry (their calls carry peer metadata)."""


def _endpoint_set(endpoints: tuple[Endpoint, ...], registered: bool = False) -> EndpointSet:
    return EndpointSet(
        endpoints=endpoints,
        by_address={e.address: e for e in endpoints},
        ready=tuple(e.address for e in endpoints if not e.draining),
        members=frozenset(e.address for e in endpoints),
        registered=registered,
    )


@dataclass(slots=True)
class Plan:
    """Everything decided once for one logical request."""

    info: RequestInfo
    decision: RouteDecision
    state: DestinationState
    endpoints: EndpointSet
    retry: RetryPolicy
    timeout: float | None
    fault: FaultDecision | None
    mirrors: tuple[Destination, ...]
    path: str
    authority: str
    request_headers: tuple[HeaderOperations, ...]
    response_headers: tuple[HeaderOperations, ...]
    hash_key: str | None
    replayable: bool
    tried: set[str] = field(default_factory=set)
    retrying: bool = False
    """A retry of this request holds one of the destination's ``maxRetries`` slots."""


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Not a mesh host: send the request unchanged."""


PASSTHROUGH = Passthrough()


def header_fields(headers: httpx.Headers) -> list[Field]:
    """Every field of ``headers`` as (name as sent, lower-case name, value).

    That is exactly the list httpx keeps (``Headers._list``, the same since httpx 0.18):
    read it directly, because every public accessor copies, re-encodes or lower-cases the
    whole list on each call, which costs more than routing the request.
    ``tests/transport/test_header_fields.py`` pins the two to each other.
    """
    fields = getattr(headers, "_list", None)
    if isinstance(fields, list):
        return fields
    return [(name, name.lower(), value) for name, value in headers.raw]


_MAX_MEMO = 4096
_RESPONSES: dict[int, Outcome] = {}


def _response_outcome(status: int) -> Outcome:
    """The (immutable, shared) outcome of an answer with ``status``."""
    outcome = _RESPONSES.get(status)
    if outcome is None:
        outcome = Outcome("response", status, sent=True)
        if 100 <= status < 600:
            _RESPONSES[status] = outcome
    return outcome


def outcome_of(exc: Exception) -> Outcome:
    """Classify a transport exception the way Envoy's retry conditions see it."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Outcome("connect_failure", None, sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return Outcome("timeout", None, sent=True)
    return Outcome("reset", None, sent=True)


class Outbound:
    """See the module docstring. One per transport; thread-safe."""

    def __init__(
        self,
        mesh: MeshView,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mesh = mesh
        self.rng = rng or random.Random()
        self.clock = clock
        self._states: dict[tuple[str, str], DestinationState] = {}
        self._extras: dict[int, tuple[RouteDecision, RouteExtras]] = {}
        self._targets: dict[
            tuple[str, str], tuple[RouteTable, EndpointTable, DestinationState, EndpointSet]
        ] = {}
        self._canonical: dict[str, str] = {}
        self._mid_body: dict[tuple[int, str], tuple[RetryPolicy, bool]] = {}
        self._lock = threading.Lock()

    # -- per request ---------------------------------------------------------------------

    def plan(self, request: httpx.Request) -> Plan | Passthrough:
        """Decide routing for ``request``; raises NoRouteError / EgressBlockedError."""
        mesh = self.mesh
        routes = mesh.route_table
        endpoints = mesh.endpoint_table
        url = request.url
        host = (url.host or "").lower()
        canonical = self._canonical.get(host)
        if canonical is None:
            canonical = self._canonicalize(host)
        if not routes.covers(canonical) and canonical not in endpoints:
            if mesh.outbound_traffic_policy == "REGISTRY_ONLY":
                raise EgressBlockedError(
                    f"{host} is not a mesh service and outbound traffic is REGISTRY_ONLY",
                    request=request,
                )
            return PASSTHROUGH
        info = RequestInfo(
            request.method,  # httpx upper-cases it
            host,
            url.path or "/",
            url.query.decode("ascii", "replace"),
            url.scheme,
            url.port,
            HeaderFields(header_fields(request.headers)),
            mesh.labels,
            mesh.namespace,
        )
        decision = routes.decide(info, self.rng)
        if decision is None:
            raise NoRouteError(
                f"no route of {canonical} matched {info.method} {info.path}", request=request
            )
        route = decision.route
        extras = self._route_extras(decision)
        state, selected = self._target(decision, routes, endpoints)
        if not selected.endpoints:
            entry = routes.service_entry(decision.service_host)
            if entry is not None and not entry.spec.endpoints:
                # A ServiceEntry resolved by DNS (or not at all): allowed out, sent as written.
                return PASSTHROUGH
        fault = (
            decide_fault(route.fault, self.rng)
            if route is not None and route.fault is not None
            else None
        )
        mirrors = decide_mirrors(route, self.rng) if route is not None and route.all_mirrors else ()
        path, authority = _rewrite(info, decision)
        return Plan(  # positional: this runs for every call
            info,
            decision,
            state,
            selected,
            extras.retry,
            extras.timeout,
            fault if fault is not None and (fault.delay or fault.abort) else None,
            mirrors,
            path,
            authority,
            extras.request_headers,
            extras.response_headers,
            _hash_key(state.policy, info),
            _replayable(request),
            set(),
        )

    def _canonicalize(self, host: str) -> str:
        """``canonical_host`` of a host as written, remembered (a bounded memo)."""
        canonical = canonical_host(host, self.mesh.namespace)
        if len(self._canonical) >= _MAX_MEMO:
            self._canonical.clear()
        self._canonical[host] = canonical
        return canonical

    def _route_extras(self, decision: RouteDecision) -> RouteExtras:
        cached = self._extras.get(id(decision))
        if cached is not None and cached[0] is decision:
            return cached[1]
        route = decision.route
        request_ops, response_ops = _header_operations(decision)
        extras = RouteExtras(
            retry=RetryPolicy.from_route(
                route.retries if route is not None else None,
                opt_in_unsafe=decision.retry_non_idempotent,
            ),
            request_headers=request_ops,
            response_headers=response_ops,
            timeout=route.timeout if route is not None and route.timeout else None,
        )
        if len(self._extras) > 4096:
            self._extras.clear()
        self._extras[id(decision)] = (decision, extras)
        return extras

    def _target(
        self, decision: RouteDecision, routes: RouteTable, table: EndpointTable
    ) -> tuple[DestinationState, EndpointSet]:
        """State and endpoints of the chosen (service, subset), cached per snapshot pair."""
        key = (decision.service_host, decision.subset)
        cached = self._targets.get(key)
        if cached is not None and cached[0] is routes and cached[1] is table:
            return cached[2], cached[3]
        labels = self.mesh.labels
        policy = routes.traffic_policy(decision.service_host, decision.subset, source_labels=labels)
        state = self._state(decision.service_host, decision.subset, policy)
        selector = (
            routes.subset_labels(decision.service_host, decision.subset, source_labels=labels)
            if decision.subset
            else None
        )
        endpoints = _endpoint_set(
            tuple(
                e
                for e in _service_endpoints(decision.service_host, routes, table)
                if e.matches(selector)
            ),
            decision.service_host in table,
        )
        self._targets[key] = (routes, table, state, endpoints)
        return state, endpoints

    def pick(self, plan: Plan) -> Endpoint:
        """An endpoint for the next attempt, preferring ones not tried yet for this request."""
        state = plan.state
        endpoints = plan.endpoints
        addresses: Sequence[str] = endpoints.ready
        outlier = state.outlier
        if outlier is not None:
            now = self.clock()
            if state.members is not endpoints.members or now >= state.next_sweep:
                with state.lock:
                    if state.members != endpoints.members:
                        outlier.set_endpoints(endpoints.members)
                    state.members = endpoints.members
                    outlier.maybe_sweep()
                    state.next_sweep = now + outlier.policy.interval
            if now < outlier.ejections_end:  # someone may be ejected: filter
                addresses = outlier.available(addresses)
        if not addresses:
            raise NoHealthyUpstreamError(
                f"no healthy upstream for {plan.decision.service_host}"
                + (f" subset {plan.decision.subset}" if plan.decision.subset else ""),
                request=None,
            )
        if plan.tried:
            addresses = [a for a in addresses if a not in plan.tried] or addresses
        address = state.balancer.pick(addresses, plan.hash_key)
        plan.tried.add(address)
        return endpoints.by_address[address]

    def record(self, plan: Plan, endpoint: Endpoint, outcome: Outcome) -> None:
        outlier = plan.state.outlier
        if outlier is not None:
            lock = plan.state.lock
            lock.acquire()  # not ``with``: half the cost, after every attempt
            try:
                outlier.record(endpoint.address, outcome)
            finally:
                lock.release()

    def retry_delay(
        self, plan: Plan, attempt: int, outcome: Outcome, deadline: float | None
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or None: do not retry."""
        decision = plan.retry.decide(
            plan.info.method,
            outcome,
            retries_done=attempt - 1,
            replayable=plan.replayable,
            now=self.clock(),
            deadline=deadline,
            rng=self.rng,
            budget=plan.state.budget,
        )
        if not decision.retry:
            return None
        if not plan.state.admission.try_start_retry():
            return None  # connectionPool.http.maxRetries retries are already in flight
        plan.retrying = True
        return decision.delay

    def end_retry(self, plan: Plan) -> None:
        """The retry in flight (if any) is over: give its ``maxRetries`` slot back."""
        if plan.retrying:
            plan.retrying = False
            plan.state.admission.finish_retry()

    def failed(
        self,
        plan: Plan,
        endpoint: Endpoint,
        exc: httpx.TransportError,
        attempt: int,
        deadline: float | None,
    ) -> float:
        """After attempt number ``attempt`` raised ``exc``: the backoff before the next one.

        Raises ``exc`` again when no retry is allowed, or :class:`UpstreamTimeoutError` when
        the route's deadline is what ended it.
        """
        self.end_retry(plan)
        plan.state.balancer.finish(endpoint.address)
        outcome = outcome_of(exc)
        self.record(plan, endpoint, outcome)
        delay = self.retry_delay(plan, attempt, outcome, deadline)
        if delay is not None:
            return delay
        if deadline is not None and self.clock() >= deadline:
            timeout = UpstreamTimeoutError(timeout_message(plan), request=exc.request)
            timeout.__cause__ = exc  # explicit: the compiled build ignores ``raise ... from``
            raise timeout
        raise exc

    def answered(
        self, plan: Plan, endpoint: Endpoint, status: int, attempt: int, deadline: float | None
    ) -> float | None:
        """After attempt number ``attempt`` got ``status``: the backoff before a retry, or None."""
        self.end_retry(plan)
        outcome = _response_outcome(status)
        self.record(plan, endpoint, outcome)
        if status < 400:
            return None
        return self.retry_delay(plan, attempt + 1, outcome, deadline)

    def buffers(self, plan: Plan, length: int | None) -> bool:
        """Read this response's body before handing it over, so a failure mid-body is retried?

        Only for a small body of declared ``length`` (at most 64 KiB), on a request that may be
        retried after a reset: an endpoint dying between the headers and the body then costs a
        retry instead of an error in the application. Streams and large bodies pass through.
        """
        if length is None or length > MAX_BUFFERED_RESPONSE or not plan.replayable:
            return False
        retry, method = plan.retry, plan.info.method
        key = (id(retry), method)
        cached = self._mid_body.get(key)
        if cached is not None and cached[0] is retry:
            return cached[1]
        retryable = retry.retryable(method, _MID_BODY_RESET)
        if len(self._mid_body) >= _MAX_MEMO:
            self._mid_body.clear()
        self._mid_body[key] = (retry, retryable)
        return retryable

    def attempt_timeout(self, plan: Plan, deadline: float | None) -> float | None:
        """The timeout for the next attempt: per-try timeout capped by the overall deadline."""
        per_try = plan.retry.per_try_timeout
        if deadline is None:
            return per_try
        left = max(0.0, deadline - self.clock())
        return left if per_try is None else min(per_try, left)

    # -- state -----------------------------------------------------------------------------

    def _state(self, host: str, subset: str, policy: TrafficPolicy | None) -> DestinationState:
        key = (host, subset)
        state = self._states.get(key)
        if state is not None and state.policy == policy:
            return state
        with self._lock:
            state = self._states.get(key)
            if state is None or state.policy != policy:
                state = DestinationState(policy, rng=self.rng, clock=self.clock)
                self._states[key] = state
            return state

    def mirror_plan(
        self, plan: Plan, destination: Destination
    ) -> tuple[DestinationState, tuple[Endpoint, ...]]:
        """State and endpoints for a mirror target of ``plan``."""
        routes = self.mesh.route_table
        host = canonical_host(destination.host, self.mesh.namespace)
        policy = routes.traffic_policy(host, destination.subset, source_labels=self.mesh.labels)
        state = self._state(host, destination.subset, policy)
        labels = (
            routes.subset_labels(host, destination.subset, source_labels=self.mesh.labels)
            if destination.subset
            else None
        )
        endpoints = tuple(
            e
            for e in _service_endpoints(host, routes, self.mesh.endpoint_table)
            if e.matches(labels)
        )
        return state, endpoints


def _service_endpoints(host: str, routes: RouteTable, table: EndpointTable) -> tuple[Endpoint, ...]:
    registered = table.endpoints(host)
    entry = routes.service_entry(host)
    if entry is None or not entry.spec.endpoints:
        return registered
    static = []
    for workload in entry.spec.endpoints:
        port = next(iter(workload.ports.values()), None) if workload.ports else None
        if port is None and entry.spec.ports:
            port = entry.spec.ports[0].target_port or entry.spec.ports[0].number
        if port is None:
            continue
        static.append(
            Endpoint(
                host=workload.address,
                port=port,
                labels=workload.labels,
                instance=f"se:{workload.address}",
            )
        )
    return registered + tuple(static)


def timeout_message(plan: Plan) -> str:
    """Why an :class:`UpstreamTimeoutError` was raised, for its message."""
    if plan.timeout:
        return f"upstream request timeout (route timeout {plan.timeout:g}s)"
    return "upstream request timeout (the caller's deadline passed)"


def _rewrite(info: RequestInfo, decision: RouteDecision) -> tuple[str, str]:
    route = decision.route
    path = info.path
    authority = info.authority
    if route is None or route.rewrite is None:
        return path, authority
    rewrite = route.rewrite
    if rewrite.uri:
        matched = decision.matched.uri if decision.matched is not None else None
        if matched is not None and matched.kind == "prefix" and path.startswith(matched.value):
            path = rewrite.uri + path[len(matched.value) :]
        elif matched is not None and matched.kind == "prefix":
            path = rewrite.uri + path
        else:
            path = rewrite.uri
        if not path.startswith("/"):
            path = "/" + path
    if rewrite.authority:
        authority = rewrite.authority
    return path, authority


def _header_operations(
    decision: RouteDecision,
) -> tuple[tuple[HeaderOperations, ...], tuple[HeaderOperations, ...]]:
    route: HTTPRoute | None = decision.route
    if route is None:
        return (), ()
    request_ops = [route.headers.request]
    response_ops = [route.headers.response]
    if decision.route_destination is not None:
        request_ops.append(decision.route_destination.headers.request)
        response_ops.append(decision.route_destination.headers.response)
    return tuple(o for o in request_ops if o), tuple(o for o in response_ops if o)


def apply_header_operations(
    headers: httpx.Headers, operations: tuple[HeaderOperations, ...]
) -> None:
    for ops in operations:
        for name in ops.remove:
            headers.pop(name, None)
        for name, value in ops.set.items():
            headers[name] = value
        for name, value in ops.add.items():
            if name in headers:
                headers[name] = f"{headers[name]},{value}"
            else:
                headers[name] = value


def _hash_key(policy: TrafficPolicy | None, info: RequestInfo) -> str | None:
    if (
        policy is None
        or policy.load_balancer is None
        or policy.load_balancer.consistent_hash is None
    ):
        return None
    return hash_key_of(policy.load_balancer.consistent_hash, info)


def _replayable(request: httpx.Request) -> bool:
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return can_replay(len(request.content), streaming=False)
    return can_replay(None, streaming=True)
