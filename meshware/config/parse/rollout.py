"""Parser for ``meshware.io`` resources: Rollout.

Field by field, like the Istio parsers: every problem is recorded with the path of the bad
field (``spec.steps[2].setWeight: must be between 0 and 100, got 120``), and fields from
Argo Rollouts or Flagger that meshware does not implement are rejected with a reason.
Checks that need other resources (the service's VirtualService and DestinationRule) live in
:mod:`meshware.config.analyze`.
"""

from __future__ import annotations

import re
from typing import Any, cast

from meshware.config.model.common import StringMatch
from meshware.config.model.rollout import (
    DEFAULT_INTERVAL,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_THRESHOLD,
    DEFAULT_WEBHOOK_TIMEOUT,
    METRIC_NAMES,
    WEBHOOK_TYPES,
    Analysis,
    AnalysisStep,
    MetricCheck,
    MetricName,
    MirrorPhase,
    PauseStep,
    Rollout,
    RolloutMatch,
    RolloutSpec,
    SetWeightStep,
    Step,
    ThresholdRange,
    Webhook,
    WebhookType,
)
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.networking.fields import check_header_name, frozen, subset_name
from meshware.config.parse.reader import Node, type_name
from meshware.config.parse.values import duration, parse_host, parse_regex

ROLLOUT_VERSIONS = ("v1alpha1",)

_STEP_KINDS = ("setWeight", "pause", "analysis")
_URL = re.compile(r"^https?://[^\s/?#]+(/\S*)?$")
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$")
_FLAGGER_WEBHOOKS = (
    "rollout",
    "confirm-rollout",
    "confirm-traffic-increase",
    "rollback",
    "event",
)


# -- steps --------------------------------------------------------------------------------


def _step(node: Node) -> Step | None:
    given = [k for k in _STEP_KINDS if k in node.data]
    node.unsupported("setCanaryScale", "meshware does not scale workloads; run the canary yourself")
    node.unsupported("setHeaderRoute", "use spec.match for A/B routing")
    node.unsupported("setMirrorRoute", "use spec.mirror for a mirror phase before the steps")
    node.unsupported("experiment", "experiments are not implemented")
    if len(given) != 1:
        for key in given:
            node.raw(key)
        before = len(node.problems)
        node.done()
        if given:
            node.error(None, f"a step does exactly one thing; got {' and '.join(given)}")
        elif len(node.problems) == before:
            node.error(None, f"must set one of {', '.join(_STEP_KINDS)}")
        return None
    kind = given[0]
    step: Step | None = None
    if kind == "setWeight":
        weight = node.integer("setWeight", required=True, minimum=0, maximum=100, default=-1)
        step = SetWeightStep(weight) if weight >= 0 else None
    elif kind == "pause":
        step = _pause(node)
    else:
        step = _analysis_step(node)
    node.done()
    return step


def _pause(node: Node) -> PauseStep:
    raw = node.raw("pause")
    if raw is None:
        return PauseStep()  # `pause:` with nothing: until promoted
    child = node.node("pause")
    if child is None:
        return PauseStep()
    seconds = duration(child, "duration", minimum=0.001)
    child.done()
    return PauseStep(seconds)


def _analysis_step(node: Node) -> AnalysisStep:
    if node.data.get("analysis") is None:
        node.raw("analysis")
        return AnalysisStep()
    child = node.node("analysis")
    if child is None:
        return AnalysisStep()
    checks = child.integer("checks", minimum=1, maximum=1000, default=1)
    child.unsupported(
        "templates", "analysis templates are not implemented; list metrics in spec.analysis"
    )
    child.done()
    return AnalysisStep(checks)


# -- analysis -----------------------------------------------------------------------------


def _threshold_range(node: Node, name: str) -> ThresholdRange:
    child = node.node("thresholdRange", required=True)
    if child is None:
        return ThresholdRange()
    upper = 100.0 if name == "request-success-rate" else None
    low = (
        child.number("min", minimum=0.0, maximum=upper, default=-1.0) if child.has("min") else None
    )
    high = (
        child.number("max", minimum=0.0, maximum=upper, default=-1.0) if child.has("max") else None
    )
    child.raw("min")
    child.raw("max")
    child.done()
    if low is None and high is None:
        child.error(None, "must set min, max or both")
    if low is not None and high is not None and low > high:
        child.error("min", f"must not exceed max ({low:g} > {high:g})")
    if name == "request-success-rate" and low is None and high is not None:
        child.error("max", "request-success-rate is a floor: set min (the lowest success %)")
    if name == "request-duration" and high is None and low is not None:
        child.error("min", "request-duration is a ceiling: set max (the highest p99 in ms)")
    return ThresholdRange(
        min=low if low is not None and low >= 0 else None,
        max=high if high is not None and high >= 0 else None,
    )


def _metric(node: Node) -> MetricCheck | None:
    name = node.enum("name", METRIC_NAMES, required=True)
    if name:
        threshold = _threshold_range(node, name)
    else:
        node.raw("thresholdRange")
        threshold = ThresholdRange()
    tolerance: float | None = None
    if node.has("tolerance"):
        tolerance = node.number("tolerance", minimum=0.0)
    else:
        node.raw("tolerance")
    node.unsupported("interval", "every metric is measured over spec.analysis.interval")
    node.unsupported("templateRef", "custom metric templates are not implemented")
    node.unsupported("query", "custom queries are not implemented")
    node.done()
    if not name:
        return None
    return MetricCheck(cast(MetricName, name), threshold, tolerance)


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be an http:// or https:// URL, got {type_name(value)}")
    if not _URL.match(value):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _webhook(node: Node) -> Webhook | None:
    name = node.string("name", required=True, nonempty=True)
    raw_type = node.data.get("type")
    if isinstance(raw_type, str) and raw_type in _FLAGGER_WEBHOOKS:
        node.raw("type")
        node.error(
            "type",
            f"{raw_type!r} webhooks are not supported by meshware; use one of "
            f"{', '.join(WEBHOOK_TYPES)}",
        )
        kind = ""
    else:
        kind = node.enum("type", WEBHOOK_TYPES, required=True)
    url = node.value("url", _url, "", required=True)
    timeout = duration(node, "timeout") or DEFAULT_WEBHOOK_TIMEOUT
    metadata = node.str_map("metadata")
    node.unsupported("muteAlert", "meshware sends no alerts")
    node.done()
    if not (name and kind and url):
        return None
    return Webhook(name, cast(WebhookType, kind), url, timeout, frozen(metadata))


def _analysis(node: Node | None) -> Analysis:
    if node is None:
        return Analysis()
    interval = duration(node, "interval", minimum=0.1) or DEFAULT_INTERVAL
    threshold = node.integer("threshold", minimum=1, maximum=1000, default=DEFAULT_THRESHOLD)
    min_requests = node.integer(
        "minRequests", minimum=0, maximum=1_000_000, default=DEFAULT_MIN_REQUESTS
    )
    metrics: list[MetricCheck] = []
    for child in node.nodes("metrics"):
        metric = _metric(child)
        if metric is None:
            continue
        if any(m.name == metric.name for m in metrics):
            child.error("name", f"metric {metric.name!r} is listed twice")
            continue
        metrics.append(metric)
    webhooks: list[Webhook] = []
    for child in node.nodes("webhooks"):
        hook = _webhook(child)
        if hook is None:
            continue
        if any(h.name == hook.name for h in webhooks):
            child.error("name", f"webhook {hook.name!r} is listed twice")
            continue
        webhooks.append(hook)
    node.unsupported("iterations", "use steps (setWeight, pause, analysis) to shape the rollout")
    node.unsupported("maxWeight", "use setWeight steps")
    node.unsupported("stepWeight", "use setWeight steps")
    node.unsupported("stepWeights", "use setWeight steps")
    node.unsupported("templates", "analysis templates are not implemented; list metrics here")
    node.unsupported("mirror", "use spec.mirror for a mirror phase")
    node.unsupported("match", "use spec.match for A/B mode")
    node.done()
    return Analysis(
        interval=interval,
        threshold=threshold,
        metrics=tuple(metrics),
        webhooks=tuple(webhooks),
        min_requests=min_requests,
    )


# -- mirror and match ---------------------------------------------------------------------


def _mirror(node: Node | None) -> MirrorPhase | None:
    if node is None:
        return None
    seconds = duration(node, "duration", required=True, minimum=0.001)
    percentage = 100.0
    if node.has("percentage"):
        percentage = node.number("percentage", minimum=0.0, maximum=100.0, default=100.0)
        if percentage == 0:
            node.error("percentage", "must be above 0 (a mirror phase that copies nothing)")
    else:
        node.raw("percentage")
    node.done()
    if seconds is None:
        return None
    return MirrorPhase(seconds, percentage)


def _string_match(node: Node) -> StringMatch:
    given = [k for k in ("exact", "prefix", "regex") if node.has(k)]
    exact = node.string("exact")
    prefix = node.string("prefix")
    regex = node.value("regex", parse_regex, "")
    node.done()
    if len(given) != 1:
        node.error(None, "must set exactly one of exact, prefix or regex")
        return StringMatch("exact")
    kind = given[0]
    if kind == "prefix":
        if not prefix:
            node.error("prefix", "must not be empty")
        return StringMatch("prefix", prefix)
    if kind == "regex":
        if not regex and not node.problems:
            node.error("regex", "must not be empty")
        return StringMatch("regex", regex)
    return StringMatch("exact", exact)


def _cookie(node: Node | None) -> tuple[str, str] | None:
    if node is None:
        return None
    name = node.string("name", required=True, nonempty=True)
    value = node.string("value")
    node.done()
    if name and not _COOKIE_NAME.match(name):
        node.error("name", f"invalid cookie name {name!r}")
    if value and not _COOKIE_VALUE.match(value):
        node.error("value", f"invalid cookie value {value!r}")
    return (name, value)


def _match(node: Node) -> RolloutMatch:
    headers: dict[str, StringMatch] = {}
    for name, child in node.node_map("headers").items():
        lowered = check_header_name(node, child.path, name)
        if lowered in headers:
            child.error(None, f"header {lowered!r} is matched twice (names are case-insensitive)")
        headers[lowered] = _string_match(child)
    cookie = _cookie(node.node("cookie"))
    if cookie is not None and "cookie" in headers:
        node.error("cookie", "match the cookie either here or as a 'cookie' header, not both")
    node.unsupported("uri", "A/B mode selects users (headers, cookie), not paths")
    node.unsupported("queryParams", "A/B mode selects users (headers, cookie), not queries")
    node.unsupported("sourceLabels", "A/B mode selects users (headers, cookie), not callers")
    node.done()
    if not headers and cookie is None and not node.problems:
        node.error(None, "must set headers, cookie or both")
    return RolloutMatch(frozen(headers), cookie)


# -- the spec -----------------------------------------------------------------------------


def _service(value: Any) -> str:
    host = parse_host(value)
    if host == "*" or host.startswith("*."):
        raise ValueError(f"must name one service, not a wildcard ({host!r})")
    return host


def parse_rollout(spec: Node, namespace: str) -> RolloutSpec:
    service = spec.value("service", _service, "", required=True)
    stable = spec.value("stableSubset", subset_name, "", required=True)
    canary = spec.value("canarySubset", subset_name, "", required=True)
    if stable and canary and stable == canary:
        spec.error("canarySubset", f"must differ from stableSubset ({stable!r})")
    parsed: list[tuple[Node, Step]] = []
    for child in spec.nodes("steps", required=True, nonempty=True):
        step = _step(child)
        if step is not None:
            parsed.append((child, step))
    steps = tuple(step for _, step in parsed)
    analysis = _analysis(spec.node("analysis"))
    mirror = _mirror(spec.node("mirror"))
    match = tuple(_match(child) for child in spec.nodes("match"))
    if spec.has("match") and not match and isinstance(spec.data.get("match"), list):
        spec.error("match", "must not be empty (omit it to roll out to everyone)")
    sticky = spec.boolean("stickyCohorts")
    spec.unsupported("workloadRef", "meshware does not manage workloads; run both versions")
    spec.unsupported("targetRef", "name the service with spec.service")
    spec.unsupported("strategy", "meshware rollouts are canaries; write steps under spec.steps")
    spec.unsupported("replicas", "meshware does not scale workloads")
    spec.unsupported("progressDeadlineSeconds", "use analysis.threshold and pause durations")
    spec.done()

    weight = 0
    for child, step in parsed:
        if isinstance(step, SetWeightStep):
            weight = step.weight
        if not isinstance(step, AnalysisStep):
            continue
        if not analysis.metrics:
            child.error("analysis", "an analysis step needs spec.analysis.metrics")
        elif weight == 0 and mirror is None:
            child.error(
                "analysis",
                "an analysis step needs canary traffic: put a setWeight above 0 (or a "
                "spec.mirror phase) before it",
            )
    if sticky:
        last = 0
        for child, step in parsed:
            if not isinstance(step, SetWeightStep):
                continue
            if step.weight < last:
                child.error(
                    "setWeight",
                    f"must not decrease with stickyCohorts (from {last} to {step.weight}): "
                    "users already on the canary would be moved back",
                )
            last = step.weight
    return RolloutSpec(
        service=service,
        stable_subset=stable,
        canary_subset=canary,
        steps=steps,
        analysis=analysis,
        mirror=mirror,
        match=match,
        sticky_cohorts=sticky,
    )


KINDS: tuple[KindSpec, ...] = (KindSpec(Rollout, ROLLOUT_VERSIONS, parse_rollout),)
