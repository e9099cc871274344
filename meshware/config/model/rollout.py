"""``meshware.io`` resources: Rollout, a staged canary release with automatic analysis.

The vocabulary is Argo Rollouts' and Flagger's: a service's ``stableSubset`` and
``canarySubset`` (subsets of its DestinationRule), ``steps`` that shift traffic
(``setWeight``), wait (``pause``) or gate on analysis (``analysis``), an optional ``mirror``
phase before any user reaches the canary, an optional ``match`` for A/B mode, and
``analysis``: metric checks every ``interval`` with a ``threshold`` of failed checks before
rollback, plus webhooks. The controller in :mod:`meshware.rollout` carries it out.

Durations are seconds as ``float``; a pause with ``duration`` None waits for
``meshware rollout promote``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Literal

from meshware.config.model.common import EMPTY_MAP, Resource, StringMatch, canonical_host
from meshware.config.model.networking import HTTPRoute, VirtualService

MetricName = Literal["request-success-rate", "request-duration"]
METRIC_NAMES: tuple[MetricName, ...] = ("request-success-rate", "request-duration")

WebhookType = Literal["pre-rollout", "confirm-promotion", "post-rollout"]
WEBHOOK_TYPES: tuple[WebhookType, ...] = ("pre-rollout", "confirm-promotion", "post-rollout")

DEFAULT_INTERVAL = 30.0
DEFAULT_THRESHOLD = 3
DEFAULT_WEBHOOK_TIMEOUT = 10.0
DEFAULT_MIN_REQUESTS = 1

GENERATED_ROUTE_PREFIX = "meshware-rollout/"
"""Names of the http routes a rollout controller adds to a VirtualService (A/B, mirror)
start with this; they are rebuilt on every step and never count as the user's routes."""

_NO_MATCHES: Mapping[str, StringMatch] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SetWeightStep:
    """Send ``weight`` % of the managed traffic to the canary (the rest to stable)."""

    weight: int


@dataclass(frozen=True, slots=True)
class PauseStep:
    """Wait ``duration`` seconds, or (None) until ``meshware rollout promote``."""

    duration: float | None = None


@dataclass(frozen=True, slots=True)
class AnalysisStep:
    """Wait until ``checks`` consecutive analysis checks have passed at the current weight."""

    checks: int = 1


Step = SetWeightStep | PauseStep | AnalysisStep


@dataclass(frozen=True, slots=True)
class ThresholdRange:
    """Bounds a metric value must stay within; None leaves that side open."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        return f"<= {self.max:g}"


@dataclass(frozen=True, slots=True)
class MetricCheck:
    """One metric of the analysis, measured for the canary and for stable.

    ``request-success-rate`` is a percentage (non-5xx responses / requests);
    ``request-duration`` is the p99 latency in milliseconds. The canary must stay within
    ``threshold_range``; with ``tolerance`` it must also be no worse than stable by more than
    that many percentage points (success rate) or milliseconds (duration).
    """

    name: MetricName
    threshold_range: ThresholdRange
    tolerance: float | None = None


@dataclass(frozen=True, slots=True)
class Webhook:
    """An HTTP POST made at one point of the rollout; a non-2xx answer or a timeout fails."""

    name: str
    type: WebhookType
    url: str
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    metadata: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)


@dataclass(frozen=True, slots=True)
class Analysis:
    """Checks run every ``interval`` while the canary takes traffic; ``threshold`` failed
    checks roll the canary back. A check with fewer than ``min_requests`` canary requests in
    its window fails ("no data"), as in Flagger: a canary nobody reaches is not healthy."""

    interval: float = DEFAULT_INTERVAL
    threshold: int = DEFAULT_THRESHOLD
    metrics: tuple[MetricCheck, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    min_requests: int = DEFAULT_MIN_REQUESTS

    def hooks(self, kind: WebhookType) -> tuple[Webhook, ...]:
        return tuple(h for h in self.webhooks if h.type == kind)


@dataclass(frozen=True, slots=True)
class MirrorPhase:
    """Before the first step, copy ``percentage`` % of idempotent requests (GET, HEAD,
    OPTIONS) to the canary for ``duration`` seconds; every answer still comes from stable."""

    duration: float
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class RolloutMatch:
    """A/B mode: one condition a request must meet to be offered the canary.

    ``headers`` are Istio header matches (lower-case names); ``cookie`` is
    ``(name, value)``, value "" meaning "the cookie is present". All that are set must hold.
    """

    headers: Mapping[str, StringMatch] = field(default_factory=lambda: _NO_MATCHES)
    cookie: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """What to roll out: traffic to ``service`` moves from ``stable_subset`` to ``canary_subset``."""

    service: str
    stable_subset: str
    canary_subset: str
    steps: tuple[Step, ...]
    analysis: Analysis = field(default_factory=Analysis)
    mirror: MirrorPhase | None = None
    match: tuple[RolloutMatch, ...] = ()
    """Non-empty: A/B mode; only matching requests can reach the canary until promotion."""
    sticky_cohorts: bool = False
    """Requires the service's VirtualService to carry ``meshware.io/sticky``: users who
    reached the canary stay there as its weight grows."""


@dataclass(frozen=True, slots=True)
class Rollout(Resource[RolloutSpec]):
    KIND: ClassVar[str] = "Rollout"
    GROUP: ClassVar[str] = "meshware.io"


def rollout_host(rollout: Rollout) -> str:
    """The canonical host of the service a rollout shifts."""
    return canonical_host(rollout.spec.service, rollout.metadata.namespace)


def is_generated_route(route_name: str) -> bool:
    return route_name.startswith(GENERATED_ROUTE_PREFIX)


def is_managed_route(route: HTTPRoute, vs: VirtualService, rollout: Rollout) -> bool:
    """Does the rollout own this route's weights? Every destination must be the rollout's
    service, in its stable or canary subset (a route that also sends traffic elsewhere, or to
    another subset, is the user's and is left alone)."""
    if is_generated_route(route.name) or not route.route:
        return False
    host = rollout_host(rollout)
    subsets = (rollout.spec.stable_subset, rollout.spec.canary_subset)
    return all(
        canonical_host(d.destination.host, vs.metadata.namespace) == host
        and d.destination.subset in subsets
        for d in route.route
    )


def managed_routes(vs: VirtualService, rollout: Rollout) -> tuple[int, ...]:
    """Indexes into ``vs.spec.http`` of the routes whose weights the rollout sets."""
    return tuple(i for i, r in enumerate(vs.spec.http) if is_managed_route(r, vs, rollout))


def virtual_service_for(
    rollout: Rollout, virtual_services: tuple[VirtualService, ...] | list[VirtualService]
) -> VirtualService | None:
    """The VirtualService routing the rollout's service (hosts compared canonically)."""
    host = rollout_host(rollout)
    for vs in virtual_services:
        if host in vs.canonical_hosts:
            return vs
    return None
