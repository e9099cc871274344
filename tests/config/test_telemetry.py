"""Telemetry: YAML in Istio's format → the typed model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.telemetry import (
    AccessLogging,
    CustomTag,
    Metrics,
    MetricSelector,
    MetricsOverride,
    TagOverride,
    Telemetry,
    TelemetrySpec,
    Tracing,
)
from meshware.config.parse import load_files, load_yaml, parse_documents
from meshware.errors import ConfigError, Problem
from tests.helpers import malformed_expectation

DATA = Path(__file__).resolve().parent.parent / "data"
_NO_SPEC = object()


def parse(text: str) -> MeshConfig:
    return parse_documents(load_yaml(text, "test.yaml"))


def manifest(spec: Any = _NO_SPEC, api_version: str = "telemetry.istio.io/v1") -> str:
    body: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "Telemetry",
        "metadata": {"name": "telemetry"},
    }
    if spec is not _NO_SPEC:
        body["spec"] = spec
    return yaml.safe_dump(body, sort_keys=False)


def telemetry_spec(spec: Any) -> TelemetrySpec:
    (resource,) = parse(manifest(spec)).of(Telemetry)
    return resource.spec


def only_problem(text: str) -> Problem:
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def load_valid(name: str) -> Telemetry:
    (resource,) = parse_documents(load_files([DATA / "valid" / name])).of(Telemetry)
    return resource


# -- valid --------------------------------------------------------------------------------


def test_tracing_with_sampling_and_custom_tags() -> None:
    telemetry = load_valid("telemetry-tracing-sampling.yaml")
    assert telemetry.ref == "Telemetry/istio-system/mesh-default"
    assert telemetry.spec.selector is None
    (tracing,) = telemetry.spec.tracing
    assert tracing.providers == ("otel",)
    assert tracing.random_sampling_percentage == 10.0
    assert isinstance(tracing.random_sampling_percentage, float)
    assert tracing.disable_span_reporting is None  # unset: inherit
    assert tracing.mode == "CLIENT_AND_SERVER"
    assert dict(tracing.custom_tags) == {
        "cluster": CustomTag("literal", value="east-1"),
        "user_agent": CustomTag("header", name="user-agent", default_value="unknown"),
        "pod": CustomTag("environment", name="POD_NAME"),
    }


def test_access_logging_on_with_filter() -> None:
    telemetry = load_valid("telemetry-access-logging.yaml")
    assert telemetry.spec.selector is not None
    assert dict(telemetry.spec.selector.match_labels) == {"app": "reviews"}
    assert telemetry.spec.access_logging == (
        AccessLogging(
            mode="SERVER",
            providers=("envoy",),
            disabled=False,
            filter_expression="response.code >= 400",
        ),
    )
    assert telemetry.spec.tracing == ()
    assert telemetry.spec.metrics == ()


def test_metrics_overrides_in_v1alpha1() -> None:
    telemetry = load_valid("telemetry-metrics.yaml")
    assert telemetry.api_version == "telemetry.istio.io/v1alpha1"
    (metrics,) = telemetry.spec.metrics
    assert metrics.providers == ("prometheus",)
    assert metrics.reporting_interval == 15.0
    drop_sizes, retag = metrics.overrides
    assert drop_sizes == MetricsOverride(
        match=MetricSelector(metric="REQUEST_SIZE", mode="CLIENT"), disabled=True
    )
    assert retag.match == MetricSelector(metric="ALL_METRICS", mode="CLIENT_AND_SERVER")
    assert retag.disabled is None
    assert dict(retag.tag_overrides) == {
        "request_host": TagOverride(operation="UPSERT", value="request.host"),
        "request_protocol": TagOverride(operation="REMOVE"),
    }


def test_unset_fields_are_none_and_explicit_ones_are_kept() -> None:
    spec = telemetry_spec(
        {
            "tracing": [{}, {"disableSpanReporting": False, "randomSamplingPercentage": 0}],
            "accessLogging": [{}, {"disabled": True}],
            "metrics": [{}, {"overrides": [{"disabled": False}]}],
        }
    )
    assert spec.tracing == (
        Tracing(),
        Tracing(disable_span_reporting=False, random_sampling_percentage=0.0),
    )
    assert spec.tracing[0].random_sampling_percentage is None
    assert spec.access_logging == (AccessLogging(), AccessLogging(disabled=True))
    assert spec.metrics == (Metrics(), Metrics(overrides=(MetricsOverride(disabled=False),)))


@pytest.mark.parametrize("percentage", [0, 0.01, 12.5, 100])
def test_sampling_percentage_bounds(percentage: float) -> None:
    spec = telemetry_spec({"tracing": [{"randomSamplingPercentage": percentage}]})
    assert spec.tracing[0].random_sampling_percentage == float(percentage)


@pytest.mark.parametrize("mode", ["CLIENT", "SERVER", "CLIENT_AND_SERVER"])
def test_tracing_match_mode(mode: str) -> None:
    spec = telemetry_spec({"tracing": [{"match": {"mode": mode}}]})
    assert spec.tracing[0].mode == mode


def test_empty_spec_is_valid() -> None:
    assert telemetry_spec({}) == TelemetrySpec()


def test_model_is_frozen() -> None:
    spec = telemetry_spec({"tracing": [{"customTags": {"a": {"literal": {"value": "b"}}}}]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.tracing[0].providers = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.tracing[0].custom_tags["b"] = CustomTag("literal", value="c")  # type: ignore[index]


# -- invalid ------------------------------------------------------------------------------

_T = "spec.tracing[0]"
_L = "spec.accessLogging[0]"
_M = "spec.metrics[0]"
_O = "spec.metrics[0].overrides[0]"


def _tracing(**fields: Any) -> dict[str, Any]:
    return {"tracing": [fields]}


def _logging(**fields: Any) -> dict[str, Any]:
    return {"accessLogging": [fields]}


def _override(**fields: Any) -> dict[str, Any]:
    return {"metrics": [{"overrides": [fields]}]}


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        # top level
        ({"targetRef": {"kind": "Gateway", "name": "gw"}}, "spec.targetRef", "not supported"),
        ({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}, "spec.targetRefs", "not supported"),
        ({"logging": []}, "spec.logging", "unknown field"),
        ({"selector": {"matchLabel": {"a": "b"}}}, "spec.selector.matchLabel", "did you mean"),
        ({"tracing": {"providers": []}}, "spec.tracing", "must be a list"),
        ({"tracing": ["otel"]}, "spec.tracing[0]", "must be a mapping"),
        # tracing
        (_tracing(randomSamplingPercentage=150), f"{_T}.randomSamplingPercentage", "got 150"),
        (_tracing(randomSamplingPercentage=-1), f"{_T}.randomSamplingPercentage", "between 0"),
        (_tracing(randomSamplingPercentage="10"), f"{_T}.randomSamplingPercentage", "string"),
        (_tracing(randomSamplingPercentage=True), f"{_T}.randomSamplingPercentage", "number"),
        (_tracing(randomSamplingPercent=5), f"{_T}.randomSamplingPercent", "did you mean"),
        (_tracing(disableSpanReporting="yes"), f"{_T}.disableSpanReporting", "true or false"),
        (_tracing(useRequestIdForTraceSampling=True), f"{_T}.useRequestIdForTraceSampling", "not"),
        (_tracing(providers="otel"), f"{_T}.providers", "must be a list"),
        (_tracing(providers=[{}]), f"{_T}.providers[0].name", "is required"),
        (_tracing(providers=[{"name": ""}]), f"{_T}.providers[0].name", "must not be empty"),
        (_tracing(providers=[{"name": "otel", "port": 1}]), f"{_T}.providers[0].port", "unknown"),
        (_tracing(match={"mode": "BOTH"}), f"{_T}.match.mode", "must be one of CLIENT_AND_SERVER"),
        (_tracing(match={"metric": "ALL"}), f"{_T}.match.metric", "unknown field"),
        (_tracing(customTags=["a"]), f"{_T}.customTags", "must be a mapping"),
        (_tracing(customTags={"a": "b"}), f"{_T}.customTags.a", "must be a mapping"),
        (_tracing(customTags={"a": {}}), f"{_T}.customTags.a", "exactly one of literal"),
        (
            _tracing(customTags={"a": {"literal": {"value": "x"}, "environment": {"name": "E"}}}),
            f"{_T}.customTags.a",
            "exactly one of literal, header, environment",
        ),
        (_tracing(customTags={"a": {"literal": {}}}), f"{_T}.customTags.a.literal.value", "req"),
        (_tracing(customTags={"a": {"header": {}}}), f"{_T}.customTags.a.header.name", "required"),
        (
            _tracing(customTags={"a": {"environment": {"name": ""}}}),
            f"{_T}.customTags.a.environment.name",
            "must not be empty",
        ),
        (
            _tracing(customTags={"a": {"header": {"name": "x", "default": "y"}}}),
            f"{_T}.customTags.a.header.default",
            "unknown field",
        ),
        (
            _tracing(customTags={"a": {"metadata": {"kind": "x"}}}),
            f"{_T}.customTags.a.metadata",
            "unknown field",
        ),
        (_tracing(customTags={"": {"literal": {"value": "x"}}}), f"{_T}.customTags.", "name"),
        # access logging
        (_logging(disabled="no"), f"{_L}.disabled", "must be true or false"),
        (_logging(match={"mode": "OUTBOUND"}), f"{_L}.match.mode", "must be one of"),
        (_logging(filter="response.code >= 400"), f"{_L}.filter", "must be a mapping"),
        (_logging(filter={}), f"{_L}.filter.expression", "is required"),
        (_logging(filter={"expression": 400}), f"{_L}.filter.expression", "must be a string"),
        (
            _logging(filter={"expression": "true", "mode": "SERVER"}),
            f"{_L}.filter.mode",
            "unknown field",
        ),
        # metrics
        ({"metrics": [{"reportingInterval": "10 seconds"}]}, f"{_M}.reportingInterval", "duration"),
        ({"metrics": [{"reportingInterval": 10}]}, f"{_M}.reportingInterval", "duration string"),
        ({"metrics": [{"reportingInterval": "0.5ms"}]}, f"{_M}.reportingInterval", "at least 1ms"),
        ({"metrics": [{"overrides": {}}]}, f"{_M}.overrides", "must be a list"),
        (_override(match={"metric": "LATENCY"}), f"{_O}.match.metric", "must be one of"),
        (_override(match={"mode": "INBOUND"}), f"{_O}.match.mode", "must be one of"),
        (_override(match={"customMetric": "my_metric"}), f"{_O}.match.customMetric", "standard"),
        (_override(disabled="true"), f"{_O}.disabled", "must be true or false"),
        (_override(tagOverrides={"a": {}}), f"{_O}.tagOverrides.a.value", "required when"),
        (
            _override(tagOverrides={"a": {"operation": "UPSERT", "value": ""}}),
            f"{_O}.tagOverrides.a.value",
            "is required when operation is UPSERT",
        ),
        (
            _override(tagOverrides={"a": {"operation": "REMOVE", "value": "x"}}),
            f"{_O}.tagOverrides.a.value",
            "must not be set when operation is REMOVE",
        ),
        (
            _override(tagOverrides={"a": {"operation": "DELETE"}}),
            f"{_O}.tagOverrides.a.operation",
            "must be one of UPSERT, REMOVE",
        ),
        (
            _override(tagOverrides={"request-host": {"value": "request.host"}}),
            f"{_O}.tagOverrides.request-host",
            "invalid tag name",
        ),
    ],
)
def test_invalid_telemetry(spec: Any, path: str, fragment: str) -> None:
    problem = only_problem(manifest(spec))
    assert problem.path == path
    assert fragment in problem.message
    assert problem.resource == "Telemetry/telemetry"


def test_missing_spec_is_required() -> None:
    problem = only_problem(manifest())
    assert problem.path == "spec"
    assert "is required" in problem.message


def test_unserved_api_version_is_rejected() -> None:
    problem = only_problem(manifest({}, api_version="telemetry.istio.io/v1beta1"))
    assert problem.path == "apiVersion"
    assert "telemetry.istio.io/v1alpha1" in problem.message


def test_every_problem_is_reported_in_one_pass() -> None:
    spec = {
        "tracing": [{"randomSamplingPercentage": 150}, {"randomSamplingPercentage": "5"}],
        "accessLogging": [{"format": "json"}],
    }
    with pytest.raises(ConfigError) as info:
        parse(manifest(spec))
    assert [p.path for p in info.value.problems] == [
        "spec.tracing[0].randomSamplingPercentage",
        "spec.tracing[1].randomSamplingPercentage",
        "spec.accessLogging[0].format",
    ]


# -- the manifests in tests/data ----------------------------------------------------------


MALFORMED = sorted((DATA / "malformed").glob("tel-*.yaml"))
VALID = sorted((DATA / "valid").glob("telemetry-*.yaml"))


def test_there_are_enough_malformed_telemetry_manifests() -> None:
    assert len(MALFORMED) >= 8


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.name)
def test_malformed_manifest_reports_exactly_its_one_mistake(path: Path) -> None:
    field, fragment, resource = malformed_expectation(path)
    with pytest.raises(ConfigError) as info:
        parse_documents(load_files([path]))
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    assert problem.path == field
    assert fragment in problem.message
    assert problem.source == str(path)
    if resource:
        assert problem.resource == resource


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_manifest_parses(path: Path) -> None:
    assert parse_documents(load_files([path])).of(Telemetry)
