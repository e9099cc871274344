"""The VirtualService a rollout stage asks for, written as a raw document (pure, no I/O).

A rollout owns the weights of its service's *managed* routes: the http routes whose every
destination is the stable or the canary subset (:func:`~meshware.config.model.rollout.
is_managed_route`). Everything else in the VirtualService (other routes, retries, timeouts,
headers, the user's fields) is kept as written. Per :class:`Traffic`:

- weights: each managed route becomes ``[stable 100-w, canary w]``, destinations keeping the
  host and port the user wrote (sticky cohorts hash ``host|subset|port``, so the identities of
  the two destinations never change while weights move, and users only ever move *to* the
  canary);
- A/B mode (``spec.match``): the managed routes stay ``[stable 100, canary 0]`` and a copy of
  the first one, restricted to the matching users, is inserted before it with the weights;
- mirror phase: before each managed route, a copy restricted to idempotent methods (GET,
  HEAD, OPTIONS) that also mirrors ``mirror`` % of its requests to the canary; every answer
  still comes from stable;
- promotion: each managed route sends everything to the canary (one destination), and the
  generated routes are dropped.

Every write also stamps the VirtualService with a :class:`Marker` (annotation
``meshware.io/rollout``): which run of which rollout, which stage, under which lease fence. The
config version *is* the record that the stage was applied: a controller that takes over
after a crash reads the marker to know whether the interrupted stage reached the config, so
it neither skips nor repeats it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.networking import VirtualService
from meshware.config.model.rollout import (
    GENERATED_ROUTE_PREFIX,
    Rollout,
    RolloutMatch,
    is_generated_route,
    is_managed_route,
    virtual_service_for,
)
from meshware.config.record import RawDocument, document_key
from meshware.rollout.errors import RolloutError

MARKER_ANNOTATION = "meshware.io/rollout"
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS")
_IDEMPOTENT_REGEX = "|".join(IDEMPOTENT_METHODS)


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the managed routes should do: canary ``weight`` %, ``mirror`` % copies (0: none),
    or everything to the canary once ``promoted``."""

    weight: int = 0
    mirror: float = 0.0
    promoted: bool = False


@dataclass(frozen=True, slots=True)
class Marker:
    """The annotation a rollout's write leaves on the VirtualService (see the module doc).

    ``run`` identifies the run (:attr:`~meshware.rollout.state.RolloutState.run`: the spec
    revision and the retry count); ``stage`` is the plan position written, or
    ``"rollback"``; ``fence`` the lease fence of the controller that wrote it;
    ``outcome``/``reason`` describe a rollback.
    """

    rollout: str
    run: str
    stage: str
    fence: int
    at: float
    weight: int = 0
    outcome: str = ""
    reason: str = ""

    def to_annotation(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> Marker | None:
        """The marker in an annotation value, or None if it is not one (hand-edited)."""
        try:
            data = json.loads(text)
            return cls(
                rollout=str(data["rollout"]),
                run=str(data["run"]),
                stage=str(data["stage"]),
                fence=int(data["fence"]),
                at=float(data["at"]),
                weight=int(data.get("weight", 0)),
                outcome=str(data.get("outcome", "")),
                reason=str(data.get("reason", "")),
            )
        except (ValueError, TypeError, KeyError):
            return None


def find_virtual_service(
    config: MeshConfig, documents: Sequence[RawDocument], rollout: Rollout
) -> tuple[VirtualService, RawDocument]:
    """The typed VirtualService of the rollout's service and its raw document."""
    vs = virtual_service_for(rollout, list(config.of(VirtualService)))
    if vs is None:
        raise RolloutError(f"{rollout.ref}: no VirtualService routes {rollout.spec.service}")
    for document in documents:
        if document_key(document) == vs.key:
            return vs, document
    raise RolloutError(f"{rollout.ref}: {vs.ref} is not among the stored documents")


def read_marker(document: RawDocument) -> Marker | None:
    meta = document.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping):
        return None
    value = annotations.get(MARKER_ANNOTATION)
    return Marker.parse(value) if isinstance(value, str) else None


def canary_weight(vs: VirtualService, rollout: Rollout) -> int:
    """The canary's share (%) of the first managed route of ``vs`` as it is now."""
    for route in vs.spec.http:
        if not is_managed_route(route, vs, rollout):
            continue
        total = sum(max(0, d.weight) for d in route.route)
        canary = sum(
            max(0, d.weight)
            for d in route.route
            if d.destination.subset == rollout.spec.canary_subset
        )
        return round(100 * canary / total) if total else 0
    return 0


def rewrite(
    vs: VirtualService, document: RawDocument, rollout: Rollout, traffic: Traffic, marker: Marker
) -> dict[str, Any]:
    """The VirtualService document for ``traffic``, stamped with ``marker``."""
    doc: dict[str, Any] = copy.deepcopy(dict(document))
    raw_routes = doc.get("spec", {}).get("http") or []
    if len(raw_routes) != len(vs.spec.http):
        raise RolloutError(f"{vs.ref}: the stored document and its parsed form disagree")
    name = rollout.metadata.name
    routes: list[dict[str, Any]] = []
    ab_added = False
    mirror_count = 0
    for raw, typed in zip(raw_routes, vs.spec.http, strict=True):
        if is_generated_route(typed.name):
            continue
        if not is_managed_route(typed, vs, rollout):
            routes.append(raw)
            continue
        stable, canary = _destinations(raw, rollout)
        if traffic.promoted:
            managed = _without_mirror(raw)
            managed["route"] = [canary]
            routes.append(managed)
            continue
        if rollout.spec.match and not ab_added and traffic.weight > 0:
            ab = _without_mirror(raw)
            ab["name"] = f"{GENERATED_ROUTE_PREFIX}{name}/ab"
            ab["match"] = _ab_matches(raw.get("match"), rollout.spec.match)
            ab["route"] = _split(stable, canary, traffic.weight)
            routes.append(ab)
            ab_added = True
        weight = 0 if rollout.spec.match else traffic.weight
        if traffic.mirror > 0:
            matches = _idempotent_matches(raw.get("match"))
            if matches:
                shadow = _without_mirror(raw)
                shadow["name"] = f"{GENERATED_ROUTE_PREFIX}{name}/mirror-{mirror_count}"
                shadow["match"] = matches
                shadow["route"] = _split(stable, canary, weight)
                shadow["mirror"] = dict(canary["destination"])
                shadow["mirrorPercentage"] = {"value": traffic.mirror}
                routes.append(shadow)
                mirror_count += 1
        managed = dict(raw)
        managed["route"] = _split(stable, canary, weight)
        routes.append(managed)
    doc["spec"]["http"] = routes
    meta = doc.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations[MARKER_ANNOTATION] = marker.to_annotation()
    meta["annotations"] = annotations
    return doc


def _destinations(
    raw: Mapping[str, Any], rollout: Rollout
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route entries (without weight) for stable and canary, from what the user wrote: the
    entry for that subset if there is one, else the first entry with the subset replaced."""
    entries = [e for e in raw.get("route") or [] if isinstance(e, Mapping)]
    by_subset = {
        (e.get("destination") or {}).get("subset"): e
        for e in entries
        if isinstance(e.get("destination"), Mapping)
    }

    def entry(subset: str) -> dict[str, Any]:
        found = by_subset.get(subset) or entries[0]
        out = {k: copy.deepcopy(v) for k, v in found.items() if k != "weight"}
        out["destination"] = {**dict(found.get("destination") or {}), "subset": subset}
        return out

    return entry(rollout.spec.stable_subset), entry(rollout.spec.canary_subset)


def _split(stable: dict[str, Any], canary: dict[str, Any], weight: int) -> list[dict[str, Any]]:
    return [
        {**copy.deepcopy(stable), "weight": 100 - weight},
        {**copy.deepcopy(canary), "weight": weight},
    ]


def _without_mirror(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: copy.deepcopy(v)
        for k, v in raw.items()
        if k not in ("mirror", "mirrors", "mirrorPercentage")
    }


def _idempotent_matches(matches: Any) -> list[dict[str, Any]]:
    """The route's match conditions narrowed to idempotent methods (only those are mirrored)."""
    out: list[dict[str, Any]] = []
    for match in matches or [{}]:
        if not isinstance(match, Mapping):
            continue
        method = match.get("method")
        if method is None:
            out.append({**copy.deepcopy(dict(match)), "method": {"regex": _IDEMPOTENT_REGEX}})
        elif isinstance(method, Mapping) and str(method.get("exact", "")).upper() in (
            IDEMPOTENT_METHODS
        ):
            out.append(copy.deepcopy(dict(match)))
    return out


def cookie_regex(name: str, value: str) -> str:
    """A ``cookie`` header regex (RE2, full match) for cookie ``name`` (= ``value``)."""
    wanted = re.escape(value) if value else "[^;]*"
    return rf"^(.*;)?\s*{re.escape(name)}={wanted}\s*(;.*)?$"


def _rollout_match(match: RolloutMatch) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for header, string_match in match.headers.items():
        headers[header] = {string_match.kind: string_match.value}
    if match.cookie is not None:
        headers["cookie"] = {"regex": cookie_regex(*match.cookie)}
    return {"headers": headers}


def _ab_matches(
    route_matches: Any, rollout_matches: Sequence[RolloutMatch]
) -> list[dict[str, Any]]:
    """Every (route condition AND rollout condition) pair: the A/B route only takes requests
    the managed route would have taken, and only from matching users."""
    converted = [_rollout_match(m) for m in rollout_matches]
    out: list[dict[str, Any]] = []
    for base in route_matches or [{}]:
        if not isinstance(base, Mapping):
            continue
        for extra in converted:
            merged = copy.deepcopy(dict(base))
            merged["headers"] = {**dict(base.get("headers") or {}), **extra["headers"]}
            out.append(merged)
    return out
