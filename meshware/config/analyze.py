"""Whole-mesh validation, like ``istioctl analyze``: checks that span resources.

Each resource has already been validated on its own; these checks need the whole mesh:

- the same ``Kind/namespace/name`` defined twice;
- a route, mirror or mirrors destination naming a subset that no DestinationRule for that
  host defines;
- two VirtualServices claiming the same host (Istio leaves the merge undefined);
- two DestinationRules for the same host and the same workloads;
- a malformed ``meshware.io/sticky`` annotation on a VirtualService;
- a Rollout whose service has no VirtualService with a route to its stable or canary
  subset, whose subsets no DestinationRule defines (or, with metrics, selects without a
  ``version`` label), that asks for sticky cohorts the VirtualService does not define, or
  that shares its service with another Rollout.

Hosts are compared after :func:`canonical_host`, so ``reviews`` in namespace ``default`` and
``reviews.default.svc.cluster.local`` are the same host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from meshware.config.model.common import Resource, ResourceKey, WorkloadSelector, canonical_host
from meshware.config.model.networking import (
    STICKY_ANNOTATION,
    Destination,
    DestinationRule,
    StickyKey,
    VirtualService,
)
from meshware.config.model.rollout import (
    Rollout,
    managed_routes,
    rollout_host,
    virtual_service_for,
)
from meshware.config.parse.document import Document
from meshware.errors import Problem

Origin = Callable[[Resource[Any]], Document | None]


def analyze(resources: Sequence[Resource[Any]], origin: Origin) -> list[Problem]:
    """Every cross-resource problem; ``origin`` locates each resource's document."""
    report = _Reporter(origin)
    unique = _check_duplicates(resources, report)
    virtual_services = [r for r in unique if isinstance(r, VirtualService)]
    destination_rules = [r for r in unique if isinstance(r, DestinationRule)]
    _check_subsets(virtual_services, destination_rules, report)
    _check_virtual_service_hosts(virtual_services, report)
    _check_destination_rule_hosts(destination_rules, report)
    _check_sticky(virtual_services, report)
    rollouts = [r for r in unique if isinstance(r, Rollout)]
    _check_rollouts(rollouts, virtual_services, destination_rules, report)
    return report.problems


class _Reporter:
    """Builds problems located at a resource's document."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.problems: list[Problem] = []

    def where(self, resource: Resource[Any]) -> str:
        doc = self.origin(resource)
        if doc is None:
            return resource.ref
        return f"{resource.ref} ({doc.source}, document {doc.index})"

    def add(self, resource: Resource[Any], path: str, message: str) -> None:
        doc = self.origin(resource)
        self.problems.append(
            Problem(
                message,
                path=path,
                resource=resource.ref,
                source=doc.source if doc else "",
                document=doc.index if doc else 0,
            )
        )


def _check_duplicates(resources: Sequence[Resource[Any]], report: _Reporter) -> list[Resource[Any]]:
    """Report repeated keys; return the first definition of each resource."""
    seen: dict[ResourceKey, Resource[Any]] = {}
    for resource in resources:
        first = seen.get(resource.key)
        if first is None:
            seen[resource.key] = resource
            continue
        first_doc = report.origin(first)
        where = f"{first_doc.source} (document {first_doc.index})" if first_doc else "elsewhere"
        report.add(
            resource,
            "metadata.name",
            f"duplicate resource: {resource.ref} is also defined in {where}",
        )
    return list(seen.values())


def _destinations(vs: VirtualService) -> Iterator[tuple[str, Destination]]:
    """Every destination of a VirtualService with its field path."""
    for i, route in enumerate(vs.spec.http):
        for j, weighted in enumerate(route.route):
            yield f"spec.http[{i}].route[{j}].destination", weighted.destination
        if route.mirror is not None:
            yield f"spec.http[{i}].mirror", route.mirror
        for j, mirror in enumerate(route.mirrors):
            yield f"spec.http[{i}].mirrors[{j}].destination", mirror.destination


def _matches(pattern: str, host: str) -> bool:
    """Does a (possibly ``*.``-wildcard) DestinationRule host cover ``host``?"""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def _check_subsets(
    virtual_services: Sequence[VirtualService],
    destination_rules: Sequence[DestinationRule],
    report: _Reporter,
) -> None:
    subsets_by_host: dict[str, set[str]] = {}
    for rule in destination_rules:
        names = {subset.name for subset in rule.spec.subsets}
        subsets_by_host.setdefault(rule.canonical_host, set()).update(names)
    for vs in virtual_services:
        for path, destination in _destinations(vs):
            if not destination.subset:
                continue
            host = canonical_host(destination.host, vs.metadata.namespace)
            defined: set[str] = set()
            covered = False
            for pattern, names in subsets_by_host.items():
                if _matches(pattern, host):
                    covered = True
                    defined |= names
            if destination.subset in defined:
                continue
            message = (
                f"subset {destination.subset!r} is not defined by any DestinationRule "
                f"for host {host}"
            )
            if defined:
                message += f" (defined subsets: {', '.join(sorted(defined))})"
            elif not covered:
                message += " (no DestinationRule has this host)"
            report.add(vs, f"{path}.subset", message)


def _check_virtual_service_hosts(
    virtual_services: Sequence[VirtualService], report: _Reporter
) -> None:
    owners: dict[str, VirtualService] = {}
    for vs in virtual_services:
        for i, host in enumerate(vs.canonical_hosts):
            owner = owners.get(host)
            if owner is None:
                owners[host] = vs
            elif owner is not vs:
                report.add(
                    vs,
                    f"spec.hosts[{i}]",
                    f"host {host} is also routed by {report.where(owner)}; two VirtualServices "
                    "for one host conflict (Istio leaves the result undefined): merge their "
                    "http routes into one VirtualService",
                )


def _selector_key(selector: WorkloadSelector | None) -> tuple[tuple[str, str], ...] | None:
    return None if selector is None else tuple(sorted(selector.match_labels.items()))


def _check_destination_rule_hosts(
    destination_rules: Sequence[DestinationRule], report: _Reporter
) -> None:
    owners: dict[tuple[str, Any], DestinationRule] = {}
    for rule in destination_rules:
        key = (rule.canonical_host, _selector_key(rule.spec.workload_selector))
        owner = owners.get(key)
        if owner is None:
            owners[key] = rule
            continue
        report.add(
            rule,
            "spec.host",
            f"host {rule.canonical_host} already has a DestinationRule, {report.where(owner)}; "
            "put every subset and policy for one host in one DestinationRule",
        )


def _check_sticky(virtual_services: Sequence[VirtualService], report: _Reporter) -> None:
    for vs in virtual_services:
        value = vs.metadata.annotations.get(STICKY_ANNOTATION)
        if value is None:
            continue
        try:
            StickyKey.parse(value)
        except ValueError as exc:
            report.add(vs, f"metadata.annotations.{STICKY_ANNOTATION}", str(exc))


def _check_rollouts(
    rollouts: Sequence[Rollout],
    virtual_services: Sequence[VirtualService],
    destination_rules: Sequence[DestinationRule],
    report: _Reporter,
) -> None:
    owners: dict[str, Rollout] = {}
    for rollout in rollouts:
        spec = rollout.spec
        host = rollout_host(rollout)
        owner = owners.setdefault(host, rollout)
        if owner is not rollout:
            report.add(
                rollout,
                "spec.service",
                f"service {host} is already rolled out by {report.where(owner)}; "
                "one Rollout per service",
            )
        vs = virtual_service_for(rollout, list(virtual_services))
        if vs is None:
            report.add(
                rollout,
                "spec.service",
                f"no VirtualService routes {host}; apply one that sends its traffic to subset "
                f"{spec.stable_subset!r}",
            )
        elif not managed_routes(vs, rollout):
            report.add(
                rollout,
                "spec.service",
                f"{report.where(vs)} has no http route whose destinations are all subset "
                f"{spec.stable_subset!r} or {spec.canary_subset!r} of {host}; the rollout "
                "would have no traffic to shift",
            )
        elif spec.sticky_cohorts and vs.sticky is None:
            report.add(
                rollout,
                "spec.stickyCohorts",
                f"{report.where(vs)} has no meshware.io/sticky annotation; add one "
                "(e.g. 'header:end-user') to keep users in their cohort",
            )
        _check_rollout_subsets(rollout, host, destination_rules, report)


def _check_rollout_subsets(
    rollout: Rollout,
    host: str,
    destination_rules: Sequence[DestinationRule],
    report: _Reporter,
) -> None:
    spec = rollout.spec
    rules = [rule for rule in destination_rules if _matches(rule.canonical_host, host)]
    for field, name in (
        ("spec.stableSubset", spec.stable_subset),
        ("spec.canarySubset", spec.canary_subset),
    ):
        subset = next((s for r in rules for s in r.spec.subsets if s.name == name), None)
        if subset is None:
            defined = sorted({s.name for r in rules for s in r.spec.subsets})
            where = f" (defined subsets: {', '.join(defined)})" if defined else ""
            if not rules:
                where = " (no DestinationRule has this host)"
            report.add(
                rollout,
                field,
                f"subset {name!r} is not defined by any DestinationRule for host {host}{where}",
            )
        elif spec.analysis.metrics and "version" not in subset.labels:
            report.add(
                rollout,
                field,
                f"subset {name!r} does not select a 'version' label; the analysis measures "
                "each subset by the version its instances report",
            )
