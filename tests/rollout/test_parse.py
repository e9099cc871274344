"""The Rollout resource: parsing, field-by-field problems named by path, whole-mesh checks,
and ``meshware apply``/``get`` with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from click.testing import Result

from meshware.cli.kinds import resolve_kind
from meshware.config.model.common import StringMatch
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.rollout import (
    AnalysisStep,
    MetricCheck,
    MirrorPhase,
    PauseStep,
    Rollout,
    RolloutMatch,
    SetWeightStep,
    ThresholdRange,
    Webhook,
)
from meshware.config.parse import load_yaml, parse_documents
from meshware.errors import ConfigError, Problem

ISSUE_EXAMPLE = """
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata:
  name: reviews
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  steps:
  - setWeight: 10
  - pause: {duration: 1m}
  - setWeight: 50
  - pause: {}              # until `meshware rollout promote reviews`
  analysis:
    interval: 30s
    threshold: 3
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 99}
    - name: request-duration
      thresholdRange: {max: 500}
"""

RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: blue, labels: {color: blue}}
"""

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""


def parse(*texts: str) -> MeshConfig:
    return parse_documents(load_yaml("\n---\n".join(texts), "test.yaml"))


def rollout_doc(**spec: Any) -> str:
    body: dict[str, Any] = {
        "service": "reviews",
        "stableSubset": "v1",
        "canarySubset": "v2",
        "steps": [{"setWeight": 10}],
    }
    body.update(spec)
    return yaml.safe_dump(
        {
            "apiVersion": "meshware.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "reviews"},
            "spec": body,
        },
        sort_keys=False,
    )


def problems(*texts: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(*texts)
    return list(info.value.problems)


def only_problem(*texts: str) -> Problem:
    found = problems(*texts)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_the_issue_example_parses_into_the_model() -> None:
    (rollout,) = parse(RULE, ROUTE, ISSUE_EXAMPLE).of(Rollout)
    spec = rollout.spec
    assert (spec.service, spec.stable_subset, spec.canary_subset) == ("reviews", "v1", "v2")
    assert spec.steps == (
        SetWeightStep(10),
        PauseStep(60.0),
        SetWeightStep(50),
        PauseStep(None),
    )
    assert spec.analysis.interval == 30.0
    assert spec.analysis.threshold == 3
    assert spec.analysis.metrics == (
        MetricCheck("request-success-rate", ThresholdRange(min=99.0)),
        MetricCheck("request-duration", ThresholdRange(max=500.0)),
    )
    assert spec.mirror is None and spec.match == () and not spec.sticky_cohorts


def test_every_extension_parses() -> None:
    text = rollout_doc(
        stickyCohorts=True,
        mirror={"duration": "30s", "percentage": 50},
        match=[
            {"headers": {"End-User": {"exact": "jason"}}},
            {"cookie": {"name": "canary", "value": "always"}},
        ],
        steps=[{"setWeight": 10}, {"analysis": {"checks": 3}}, {"analysis": None}],
        analysis={
            "interval": "1s",
            "threshold": 2,
            "minRequests": 20,
            "metrics": [
                {
                    "name": "request-success-rate",
                    "thresholdRange": {"min": 99},
                    "tolerance": 0.5,
                }
            ],
            "webhooks": [
                {
                    "name": "smoke",
                    "type": "pre-rollout",
                    "url": "http://tester:8080/smoke",
                    "timeout": "5s",
                    "metadata": {"suite": "quick"},
                }
            ],
        },
    )
    sticky_route = ROUTE.replace(
        "metadata: {name: reviews}",
        "metadata: {name: reviews, annotations: {meshware.io/sticky: 'header:end-user'}}",
    )
    (rollout,) = parse(RULE, sticky_route, text).of(Rollout)
    spec = rollout.spec
    assert spec.sticky_cohorts
    assert spec.mirror == MirrorPhase(30.0, 50.0)
    assert spec.match == (
        RolloutMatch(headers={"end-user": StringMatch("exact", "jason")}),
        RolloutMatch(cookie=("canary", "always")),
    )
    assert spec.steps == (SetWeightStep(10), AnalysisStep(3), AnalysisStep(1))
    assert spec.analysis.min_requests == 20
    assert spec.analysis.metrics[0].tolerance == 0.5
    assert spec.analysis.webhooks == (
        Webhook("smoke", "pre-rollout", "http://tester:8080/smoke", 5.0, {"suite": "quick"}),
    )


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"steps": [{"setWeight": 120}]}, "spec.steps[0].setWeight", "between 0 and 100"),
        ({"steps": [{"setWeight": "10%"}]}, "spec.steps[0].setWeight", "must be an integer"),
        ({"steps": []}, "spec.steps", "must not be empty"),
        ({"steps": [{}]}, "spec.steps[0]", "must set one of setWeight, pause, analysis"),
        (
            {"steps": [{"setWeight": 10, "pause": {}}]},
            "spec.steps[0]",
            "exactly one thing; got setWeight and pause",
        ),
        ({"steps": [{"pause": {"duration": "1x"}}]}, "spec.steps[0].pause.duration", "1x"),
        ({"steps": [{"pause": {"duraton": "1s"}}]}, "spec.steps[0].pause.duraton", "did you mean"),
        (
            {"steps": [{"setCanaryScale": {"replicas": 1}}]},
            "spec.steps[0].setCanaryScale",
            "not supported",
        ),
        (
            {
                "steps": [{"setWeight": 10}, {"analysis": {"checks": 0}}],
                "analysis": {
                    "metrics": [{"name": "request-duration", "thresholdRange": {"max": 9}}]
                },
            },
            "spec.steps[1].analysis.checks",
            "between 1",
        ),
        ({"canarySubset": "v1"}, "spec.canarySubset", "must differ from stableSubset"),
        ({"canarySubset": "V2"}, "spec.canarySubset", "invalid subset name"),
        ({"service": "*.example.com"}, "spec.service", "wildcard"),
        ({"analysis": {"interval": "10ms"}}, "spec.analysis.interval", "at least"),
        ({"analysis": {"threshold": 0}}, "spec.analysis.threshold", "between 1"),
        ({"analysis": {"treshold": 2}}, "spec.analysis.treshold", "did you mean 'threshold'"),
        (
            {"analysis": {"stepWeight": 10}},
            "spec.analysis.stepWeight",
            "not supported by meshware: use setWeight steps",
        ),
        (
            {"analysis": {"metrics": [{"name": "error-rate", "thresholdRange": {"max": 1}}]}},
            "spec.analysis.metrics[0].name",
            "must be one of request-success-rate, request-duration",
        ),
        (
            {"analysis": {"metrics": [{"name": "request-success-rate"}]}},
            "spec.analysis.metrics[0].thresholdRange",
            "is required",
        ),
        (
            {
                "analysis": {
                    "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 101}}]
                }
            },
            "spec.analysis.metrics[0].thresholdRange.min",
            "between 0 and 100",
        ),
        (
            {
                "analysis": {
                    "metrics": [{"name": "request-duration", "thresholdRange": {"min": 10}}]
                }
            },
            "spec.analysis.metrics[0].thresholdRange.min",
            "request-duration is a ceiling",
        ),
        (
            {
                "analysis": {
                    "metrics": [
                        {"name": "request-duration", "thresholdRange": {"max": 10}},
                        {"name": "request-duration", "thresholdRange": {"max": 20}},
                    ]
                }
            },
            "spec.analysis.metrics[1].name",
            "listed twice",
        ),
        (
            {
                "analysis": {
                    "metrics": [
                        {
                            "name": "request-duration",
                            "thresholdRange": {"max": 10},
                            "interval": "1m",
                        }
                    ]
                }
            },
            "spec.analysis.metrics[0].interval",
            "not supported",
        ),
        (
            {"analysis": {"webhooks": [{"name": "x", "type": "rollout", "url": "http://a/"}]}},
            "spec.analysis.webhooks[0].type",
            "'rollout' webhooks are not supported",
        ),
        (
            {"analysis": {"webhooks": [{"name": "x", "type": "pre-rollout", "url": "ftp://a"}]}},
            "spec.analysis.webhooks[0].url",
            "http:// or https:// URL",
        ),
        (
            {"analysis": {"webhooks": [{"type": "pre-rollout", "url": "http://a/"}]}},
            "spec.analysis.webhooks[0].name",
            "is required",
        ),
        ({"mirror": {"percentage": 50}}, "spec.mirror.duration", "is required"),
        (
            {"mirror": {"duration": "10s", "percentage": 0}},
            "spec.mirror.percentage",
            "must be above 0",
        ),
        ({"match": []}, "spec.match", "must not be empty"),
        ({"match": [{}]}, "spec.match[0]", "must set headers, cookie or both"),
        (
            {"match": [{"headers": {"end-user": {"exact": "a", "prefix": "b"}}}]},
            "spec.match[0].headers.end-user",
            "exactly one of exact, prefix or regex",
        ),
        (
            {"match": [{"headers": {"end-user": {"regex": "(?=x)"}}}]},
            "spec.match[0].headers.end-user.regex",
            "lookahead",
        ),
        (
            {"match": [{"cookie": {"name": "bad name"}}]},
            "spec.match[0].cookie.name",
            "invalid cookie name",
        ),
        (
            {"match": [{"uri": {"prefix": "/"}}]},
            "spec.match[0].uri",
            "A/B mode selects users",
        ),
        ({"stickyCohorts": "yes"}, "spec.stickyCohorts", "must be true or false"),
        ({"strategy": {"canary": {}}}, "spec.strategy", "not supported"),
    ],
)
def test_a_bad_field_is_named_by_its_path(spec: dict[str, Any], path: str, fragment: str) -> None:
    problem = only_problem(RULE, ROUTE, rollout_doc(**spec))
    assert problem.path == path, str(problem)
    assert fragment in problem.message, str(problem)
    assert problem.resource == "Rollout/reviews"
    assert problem.document == 3


def test_an_analysis_step_needs_metrics_and_sticky_weights_must_grow() -> None:
    found = problems(
        RULE,
        ROUTE.replace(
            "{name: reviews}", "{name: reviews, annotations: {meshware.io/sticky: 'cookie:u'}}"
        ),
        rollout_doc(
            stickyCohorts=True,
            steps=[{"setWeight": 50}, {"analysis": {}}, {"setWeight": 20}],
        ),
    )
    assert [(p.path, p.message.split(":")[0]) for p in found] == [
        ("spec.steps[1].analysis", "an analysis step needs spec.analysis.metrics"),
        ("spec.steps[2].setWeight", "must not decrease with stickyCohorts (from 50 to 20)"),
    ]


def test_an_analysis_step_needs_canary_traffic() -> None:
    metrics = {"metrics": [{"name": "request-duration", "thresholdRange": {"max": 100}}]}
    problem = only_problem(
        RULE, ROUTE, rollout_doc(steps=[{"analysis": {}}, {"setWeight": 10}], analysis=metrics)
    )
    assert problem.path == "spec.steps[0].analysis"
    assert "needs canary traffic" in problem.message
    mirrored = rollout_doc(
        steps=[{"analysis": {}}, {"setWeight": 10}], analysis=metrics, mirror={"duration": "1m"}
    )
    parse(RULE, ROUTE, mirrored)


def test_the_api_version_is_meshware_io_v1alpha1() -> None:
    problem = only_problem(rollout_doc().replace("meshware.io/v1alpha1", "argoproj.io/v1alpha1"))
    assert problem.path == "apiVersion"
    assert "meshware.io/v1alpha1" in problem.message


# -- whole-mesh checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("documents", "path", "fragment"),
    [
        ((RULE,), "spec.service", "no VirtualService routes reviews.default.svc.cluster.local"),
        (
            (RULE, ROUTE.replace("subset: v1", "subset: blue")),
            "spec.service",
            "has no http route whose destinations are all subset 'v1' or 'v2'",
        ),
        (
            (ROUTE.replace("subset: v1", ""),),
            "spec.stableSubset",
            "no DestinationRule has this host",
        ),
        (
            (RULE.replace("  - {name: v2, labels: {version: v2}}\n", ""), ROUTE),
            "spec.canarySubset",
            "subset 'v2' is not defined by any DestinationRule for host "
            "reviews.default.svc.cluster.local (defined subsets: blue, v1)",
        ),
    ],
)
def test_cross_resource_facts_are_checked_at_apply(
    documents: tuple[str, ...], path: str, fragment: str
) -> None:
    found = [p for p in problems(*documents, rollout_doc()) if p.resource == "Rollout/reviews"]
    assert any(p.path == path and fragment in p.message for p in found), "\n".join(map(str, found))


def test_sticky_cohorts_need_the_sticky_annotation() -> None:
    problem = only_problem(RULE, ROUTE, rollout_doc(stickyCohorts=True))
    assert problem.path == "spec.stickyCohorts"
    assert "meshware.io/sticky" in problem.message


def test_metrics_need_subsets_that_select_a_version() -> None:
    metrics = {"metrics": [{"name": "request-duration", "thresholdRange": {"max": 100}}]}
    problem = only_problem(RULE, ROUTE, rollout_doc(canarySubset="blue", analysis=metrics))
    assert problem.path == "spec.canarySubset"
    assert "does not select a 'version' label" in problem.message
    parse(RULE, ROUTE, rollout_doc(canarySubset="blue"))  # without metrics it is fine


def test_one_rollout_per_service() -> None:
    second = rollout_doc().replace("name: reviews\n", "name: reviews-again\n", 1)
    problem = only_problem(RULE, ROUTE, rollout_doc(), second)
    assert problem.resource == "Rollout/reviews-again"
    assert "already rolled out by Rollout/reviews" in problem.message


def test_a_promoted_rollout_stays_valid() -> None:
    promoted = ROUTE.replace("subset: v1", "subset: v2")
    parse(RULE, promoted, rollout_doc())


# -- the command line --------------------------------------------------------------------


def test_apply_and_get_with_the_ro_short_name(
    meshctl: Callable[..., Result], tmp_path: Any
) -> None:
    assert resolve_kind("ro") == resolve_kind("rollouts") == "Rollout"
    path = tmp_path / "rollout.yaml"
    path.write_text("\n---\n".join([RULE, ROUTE, ISSUE_EXAMPLE]))
    applied = meshctl("apply", "-f", str(path))
    assert applied.exit_code == 0, applied.output
    assert "rollout/reviews created" in applied.output
    got = meshctl("get", "ro", "reviews", "-o", "json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["spec"]["steps"][3] == {"pause": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(rollout_doc(steps=[{"setWeight": 120}]))
    refused = meshctl("apply", "-f", str(bad))
    assert refused.exit_code == 1
    assert "spec.steps[0].setWeight: must be between 0 and 100, got 120" in refused.output
