"""PeerAuthentication and AuthorizationPolicy: YAML in Istio's format → the typed model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.security import (
    AuthorizationPolicy,
    AuthorizationPolicySpec,
    Condition,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
    ValueMatch,
)
from meshware.config.parse import load_files, load_yaml, parse_documents
from meshware.errors import ConfigError, Problem
from tests.helpers import malformed_expectation

DATA = Path(__file__).resolve().parent.parent / "data"
_NO_SPEC = object()


def parse(text: str) -> MeshConfig:
    return parse_documents(load_yaml(text, "test.yaml"))


def manifest(spec: Any = _NO_SPEC, kind: str = "AuthorizationPolicy", **meta: str) -> str:
    body: dict[str, Any] = {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": "policy", **meta},
    }
    if spec is not _NO_SPEC:
        body["spec"] = spec
    return yaml.safe_dump(body, sort_keys=False)


def only_problem(text: str) -> Problem:
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def policy_spec(spec: Any = _NO_SPEC) -> AuthorizationPolicySpec:
    (resource,) = parse(manifest(spec)).of(AuthorizationPolicy)
    return resource.spec


def load_valid(name: str) -> MeshConfig:
    return parse_documents(load_files([DATA / "valid" / name]))


# -- valid AuthorizationPolicy ------------------------------------------------------------


def test_allow_nothing_empty_spec_has_no_rules() -> None:
    (policy,) = load_valid("security-authz-allow-nothing.yaml").of(AuthorizationPolicy)
    assert policy.metadata.namespace == "bookinfo"
    assert policy.api_version == "security.istio.io/v1"
    assert policy.spec == AuthorizationPolicySpec(selector=None, action="ALLOW", rules=())


@pytest.mark.parametrize("spec", [_NO_SPEC, None, {}, {"action": "ALLOW"}, {"rules": []}])
def test_missing_or_empty_spec_is_allow_nothing(spec: Any) -> None:
    assert policy_spec(spec) == AuthorizationPolicySpec(action="ALLOW", rules=())


def test_empty_rule_matches_everything_and_differs_from_no_rules() -> None:
    spec = policy_spec({"rules": [{}]})
    assert spec.rules == (Rule(),)
    assert spec.rules != policy_spec({}).rules


def test_deny_admin_prefix_path() -> None:
    (policy,) = load_valid("security-authz-deny-admin.yaml").of(AuthorizationPolicy)
    assert policy.ref == "AuthorizationPolicy/bookinfo/deny-admin"
    assert policy.spec.action == "DENY"
    assert policy.spec.selector is not None
    assert dict(policy.spec.selector.match_labels) == {"app": "productpage"}
    (rule,) = policy.spec.rules
    assert rule.sources == ()
    assert rule.conditions == ()
    (operation,) = rule.operations
    assert operation.paths == (ValueMatch("prefix", "/admin"),)
    assert operation.paths[0].matches("/admin/users")
    assert not operation.paths[0].matches("/public")


def test_allow_get_from_principal_when_header_version() -> None:
    (policy,) = load_valid("security-authz-reviews-viewer.yaml").of(AuthorizationPolicy)
    assert policy.api_version == "security.istio.io/v1beta1"
    assert policy.spec.action == "ALLOW"
    (rule,) = policy.spec.rules
    assert rule.sources == (
        Source(principals=(ValueMatch("exact", "cluster.local/ns/default/sa/productpage"),)),
    )
    assert rule.operations == (Operation(methods=(ValueMatch("exact", "GET"),)),)
    assert rule.conditions == (
        Condition(
            key="request.headers",
            header="version",
            values=(ValueMatch("exact", "v1"), ValueMatch("exact", "v2")),
        ),
    )


def test_every_field_lands_in_the_model() -> None:
    (policy,) = load_valid("security-authz-ratings-full.yaml").of(AuthorizationPolicy)
    spec = policy.spec
    assert spec.action == "AUDIT"
    assert spec.selector is not None
    assert dict(spec.selector.match_labels) == {"app": "ratings", "version": "v1"}
    first, catch_all = spec.rules
    assert catch_all == Rule()
    assert first.sources == (
        Source(
            principals=(ValueMatch("prefix", "cluster.local/ns/bookinfo/sa/"),),
            not_principals=(ValueMatch("suffix", "/sa/legacy"),),
        ),
        Source(
            namespaces=(ValueMatch("prefix", "prod-"),),
            not_namespaces=(ValueMatch("exact", "prod-sandbox"),),
        ),
    )
    (operation,) = first.operations
    assert operation.hosts == (
        ValueMatch("exact", "ratings.bookinfo.svc.cluster.local"),  # lower-cased
        ValueMatch("suffix", ".example.com"),
    )
    assert operation.not_hosts == (ValueMatch("exact", "internal.example.com"),)
    assert operation.ports == (9080,)
    assert operation.not_ports == (15020,)
    assert operation.methods == (ValueMatch("exact", "GET"), ValueMatch("exact", "HEAD"))
    assert operation.not_methods == (ValueMatch("exact", "DELETE"),)
    assert operation.paths == (
        ValueMatch("prefix", "/ratings/"),
        ValueMatch("suffix", ".json"),
        ValueMatch("exact", "/health"),
    )
    assert operation.not_paths == (ValueMatch("present"),)
    assert first.conditions == (
        Condition(key="source.namespace", not_values=(ValueMatch("exact", "test"),)),
        Condition(key="destination.port", values=(ValueMatch("exact", "9080"),)),
        Condition(key="source.principal", values=(ValueMatch("present"),)),
    )


def test_header_condition_name_is_lower_cased_and_port_values_normalised() -> None:
    spec = policy_spec(
        {
            "rules": [
                {
                    "when": [
                        {"key": "request.headers[X-Canary]", "notValues": ["off*"]},
                        {"key": "destination.port", "values": ["08080"]},
                    ]
                }
            ]
        }
    )
    header, port = spec.rules[0].conditions
    assert (header.key, header.header) == ("request.headers", "x-canary")
    assert header.not_values == (ValueMatch("prefix", "off"),)
    assert port.values == (ValueMatch("exact", "8080"),)


def test_deny_with_a_catch_all_rule_is_valid() -> None:
    spec = policy_spec({"action": "DENY", "rules": [{}]})
    assert spec.action == "DENY"
    assert spec.rules == (Rule(),)


def test_model_is_frozen() -> None:
    spec = policy_spec({"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]})
    assert isinstance(spec.rules, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.action = "DENY"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.rules[0].operations[0].ports = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("pattern", "candidate", "expected"),
    [
        (ValueMatch("exact", "/a"), "/a", True),
        (ValueMatch("exact", "/a"), "/ab", False),
        (ValueMatch("prefix", "/admin"), "/admin", True),
        (ValueMatch("prefix", "/admin"), "/adm", False),
        (ValueMatch("suffix", ".png"), "/img/x.png", True),
        (ValueMatch("suffix", ".png"), "/img/x.jpg", False),
        (ValueMatch("present"), "anything", True),
        (ValueMatch("present"), "", False),
    ],
)
def test_value_match_semantics(pattern: ValueMatch, candidate: str, expected: bool) -> None:
    assert pattern.matches(candidate) is expected


@pytest.mark.parametrize("text", ["/exact", "/admin*", "*.png", "*"])
def test_value_match_renders_as_written(text: str) -> None:
    spec = policy_spec({"rules": [{"to": [{"operation": {"paths": [text]}}]}]})
    assert str(spec.rules[0].operations[0].paths[0]) == text


# -- invalid AuthorizationPolicy ----------------------------------------------------------

_SOURCE_RULE = "spec.rules[0].from[0].source"
_OPERATION_RULE = "spec.rules[0].to[0].operation"


def _with_source(source: Any) -> dict[str, Any]:
    return {"rules": [{"from": [{"source": source}]}]}


def _with_operation(operation: Any) -> dict[str, Any]:
    return {"rules": [{"to": [{"operation": operation}]}]}


def _with_condition(condition: Any) -> dict[str, Any]:
    return {"rules": [{"when": [condition]}]}


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        # envelope-level choices
        ({"action": "CUSTOM"}, "spec.action", "CUSTOM authorization is not supported by meshware"),
        ({"action": "deny"}, "spec.action", "must be one of ALLOW, DENY, AUDIT"),
        ({"action": 1}, "spec.action", "must be one of"),
        ({"provider": {"name": "ext"}}, "spec.provider", "only applies to CUSTOM"),
        ({"targetRef": {"kind": "Gateway", "name": "gw"}}, "spec.targetRef", "not supported"),
        ({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}, "spec.targetRefs", "not supported"),
        ({"rule": []}, "spec.rule", "unknown field (did you mean 'rules'?)"),
        ({"selector": {"matchLabels": ["app"]}}, "spec.selector.matchLabels", "mapping"),
        ({"action": "DENY"}, "spec.rules", "DENY policy without rules"),
        ({"action": "DENY", "rules": []}, "spec.rules", "DENY policy without rules"),
        ({"rules": {"from": []}}, "spec.rules", "must be a list"),
        ({"rules": ["allow"]}, "spec.rules[0]", "must be a mapping"),
        ({"rules": [{"from": []}]}, "spec.rules[0].from", "must not be empty"),
        ({"rules": [{"to": []}]}, "spec.rules[0].to", "must not be empty"),
        ({"rules": [{"from": [{}]}]}, _SOURCE_RULE, "is required"),
        ({"rules": [{"to": [{}]}]}, _OPERATION_RULE, "is required"),
        ({"rules": [{"form": []}]}, "spec.rules[0].form", "did you mean 'from'?"),
        # from.source
        (_with_source({}), _SOURCE_RULE, "must not be empty"),
        (_with_source({"principals": []}), _SOURCE_RULE, "must not be empty"),
        (_with_source({"principal": ["a"]}), f"{_SOURCE_RULE}.principal", "did you mean"),
        (_with_source({"principals": "a"}), f"{_SOURCE_RULE}.principals", "must be a list"),
        (_with_source({"principals": [1]}), f"{_SOURCE_RULE}.principals[0]", "must be a string"),
        (_with_source({"notPrincipals": [""]}), f"{_SOURCE_RULE}.notPrincipals[0]", "not be empty"),
        (
            _with_source({"principals": ["spiffe://cluster.local/ns/a/sa/b"]}),
            f"{_SOURCE_RULE}.principals[0]",
            "without 'spiffe://'",
        ),
        (_with_source({"namespaces": ["a*b"]}), f"{_SOURCE_RULE}.namespaces[0]", "'*' is allowed"),
        (_with_source({"namespaces": ["**"]}), f"{_SOURCE_RULE}.namespaces[0]", "'*' is allowed"),
        (_with_source({"notNamespaces": ["*a*"]}), f"{_SOURCE_RULE}.notNamespaces[0]", "'*'"),
        # to.operation
        (_with_operation({}), _OPERATION_RULE, "must not be empty"),
        (_with_operation({"paths": []}), _OPERATION_RULE, "must not be empty"),
        (_with_operation({"ports": [80]}), f"{_OPERATION_RULE}.ports[0]", 'quote it: "80"'),
        (_with_operation({"ports": ["0"]}), f"{_OPERATION_RULE}.ports[0]", "between 1 and 65535"),
        (_with_operation({"notPorts": ["65536"]}), f"{_OPERATION_RULE}.notPorts[0]", "65535"),
        (_with_operation({"ports": ["http"]}), f"{_OPERATION_RULE}.ports[0]", "invalid port"),
        (_with_operation({"ports": ["8*"]}), f"{_OPERATION_RULE}.ports[0]", "invalid port"),
        (_with_operation({"methods": [""]}), f"{_OPERATION_RULE}.methods[0]", "must not be empty"),
        (_with_operation({"hosts": ["a.*.com"]}), f"{_OPERATION_RULE}.hosts[0]", "'*' is allowed"),
        (_with_operation({"paths": ["/a/*/b"]}), f"{_OPERATION_RULE}.paths[0]", "'*' is allowed"),
        (_with_operation({"notPaths": ["/a*b*"]}), f"{_OPERATION_RULE}.notPaths[0]", "'*'"),
        (_with_operation({"paths": ["admin"]}), f"{_OPERATION_RULE}.paths[0]", "start with '/'"),
        (_with_operation({"paths": ["/a/{**}"]}), f"{_OPERATION_RULE}.paths[0]", "path templates"),
        (_with_operation({"paths": ["/a/{*}/b"]}), f"{_OPERATION_RULE}.paths[0]", "not supported"),
        (_with_operation({"paths": ["/a{b"]}), f"{_OPERATION_RULE}.paths[0]", "'{' and '}'"),
        (_with_operation({"path": ["/a"]}), f"{_OPERATION_RULE}.path", "did you mean 'paths'?"),
        # when
        (_with_condition({"values": ["a"]}), "spec.rules[0].when[0].key", "is required"),
        (_with_condition({"key": "", "values": ["a"]}), "spec.rules[0].when[0].key", "empty"),
        (
            _with_condition({"key": "source.namespace"}),
            "spec.rules[0].when[0]",
            "at least one of values or notValues",
        ),
        (
            _with_condition({"key": "source.namespace", "values": [], "notValues": []}),
            "spec.rules[0].when[0]",
            "at least one of values or notValues",
        ),
        (
            _with_condition({"key": "source.namespace", "value": ["a"]}),
            "spec.rules[0].when[0].value",
            "did you mean 'values'?",
        ),
        (
            _with_condition({"key": "source.namespace", "values": ["a*b"]}),
            "spec.rules[0].when[0].values[0]",
            "'*' is allowed",
        ),
        (
            _with_condition({"key": "destination.port", "values": ["http"]}),
            "spec.rules[0].when[0].values[0]",
            "invalid port",
        ),
        (
            _with_condition({"key": "destination.port", "notValues": [443]}),
            "spec.rules[0].when[0].notValues[0]",
            "quote it",
        ),
        (
            _with_condition({"key": "source.principal", "values": ["spiffe://x/ns/a/sa/b"]}),
            "spec.rules[0].when[0].values[0]",
            "spiffe://",
        ),
    ],
)
def test_invalid_authorization_policy(spec: Any, path: str, fragment: str) -> None:
    problem = only_problem(manifest(spec))
    assert problem.path == path
    assert fragment in problem.message
    assert problem.resource == "AuthorizationPolicy/policy"
    assert problem.source == "test.yaml"


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("request.header[version]", "unknown condition key"),
        ("source.user", "unknown condition key"),
        ("request.headers", "use request.headers[NAME]"),
        ("request.headers[]", "use request.headers[NAME]"),
        ("request.headers[x-a", "use request.headers[NAME]"),
        ("request.headers[bad name]", "not a valid HTTP header name"),
        ("source.ip", "not supported by meshware: meshware has no IP-based rules"),
        ("remote.ip", "no IP-based rules"),
        ("destination.ip", "no IP-based rules"),
        ("request.auth.principal", "not supported by meshware: meshware has no JWT"),
        ("request.auth.claims[iss]", "no JWT"),
        ("source.serviceAccount", "use source.principal"),
        ("connection.sni", "not supported by meshware"),
        ("experimental.envoy.filters.x[y]", "not supported by meshware"),
        ("destination.namespace", "replaced by the policy's metadata.namespace"),
        ("destination.labels[app]", "replaced by the policy's selector"),
    ],
)
def test_condition_keys(key: str, fragment: str) -> None:
    problem = only_problem(manifest(_with_condition({"key": key, "values": ["v"]})))
    assert problem.path == "spec.rules[0].when[0].key"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("requestPrincipals", "no JWT authentication"),
        ("notRequestPrincipals", "no JWT authentication"),
        ("ipBlocks", "no IP-based rules"),
        ("notIpBlocks", "no IP-based rules"),
        ("remoteIpBlocks", "no IP-based rules"),
        ("notRemoteIpBlocks", "no IP-based rules"),
        ("serviceAccounts", "as a principal"),
        ("notServiceAccounts", "as a principal"),
    ],
)
def test_unsupported_source_fields_are_rejected_with_a_reason(key: str, reason: str) -> None:
    problem = only_problem(manifest(_with_source({key: ["x"]})))
    assert problem.path == f"{_SOURCE_RULE}.{key}"
    assert problem.message.startswith("is not supported by meshware: ")
    assert reason in problem.message


def test_custom_action_with_its_provider_is_one_problem() -> None:
    problem = only_problem(manifest({"action": "CUSTOM", "provider": {"name": "opa"}}))
    assert problem.path == "spec.action"
    assert "CUSTOM authorization is not supported by meshware" in problem.message


def test_every_problem_is_reported_in_one_pass() -> None:
    spec = {
        "action": "PERMIT",
        "rules": [
            {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]},
            {"to": [{"operation": {"paths": ["/a/*/b"], "ports": [80]}}]},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse(manifest(spec))
    assert {p.path for p in info.value.problems} == {
        "spec.action",
        "spec.rules[0].from[0].source.ipBlocks",
        "spec.rules[1].to[0].operation.paths[0]",
        "spec.rules[1].to[0].operation.ports[0]",
    }


def test_unserved_api_version_is_rejected() -> None:
    text = manifest({}).replace("security.istio.io/v1", "security.istio.io/v1alpha1")
    problem = only_problem(text)
    assert problem.path == "apiVersion"
    assert "security.istio.io/v1beta1" in problem.message


# -- PeerAuthentication -------------------------------------------------------------------


def test_peer_authentication_port_level_mtls_accepts_integer_and_string_ports() -> None:
    config = load_valid("security-peer-authentication.yaml")
    mesh_wide, reviews = config.of(PeerAuthentication)
    assert mesh_wide.spec.mode == "STRICT"
    assert mesh_wide.spec.selector is None
    assert reviews.spec.mode == "STRICT"
    assert dict(reviews.spec.port_modes) == {9090: "DISABLE", 9091: "PERMISSIVE"}


def test_peer_authentication_missing_spec_is_unset() -> None:
    (peer,) = parse(manifest(kind="PeerAuthentication")).of(PeerAuthentication)
    assert peer.spec.mode == "UNSET"
    assert dict(peer.spec.port_modes) == {}


_SELECTED = {"selector": {"matchLabels": {"app": "reviews"}}}


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"mtls": {"mode": "strict"}}, "spec.mtls.mode", "must be one of UNSET, DISABLE"),
        ({"mtls": {"mod": "STRICT"}}, "spec.mtls.mod", "did you mean 'mode'?"),
        ({"portLevelMtls": {8080: {"mode": "DISABLE"}}}, "spec.portLevelMtls", "selector"),
        (
            {"selector": {"matchLabels": {}}, "portLevelMtls": {8080: {"mode": "DISABLE"}}},
            "spec.portLevelMtls",
            "requires a workload selector",
        ),
        ({**_SELECTED, "portLevelMtls": {}}, "spec.portLevelMtls", "must not be empty"),
        ({**_SELECTED, "portLevelMtls": [8080]}, "spec.portLevelMtls", "must be a mapping"),
        ({**_SELECTED, "portLevelMtls": {0: {"mode": "DISABLE"}}}, "spec.portLevelMtls.0", "1"),
        (
            {**_SELECTED, "portLevelMtls": {"http": {"mode": "DISABLE"}}},
            "spec.portLevelMtls.http",
            "port must be a number between 1 and 65535",
        ),
        (
            {**_SELECTED, "portLevelMtls": {8080: {"mode": "OFF"}}},
            "spec.portLevelMtls.8080.mode",
            "must be one of",
        ),
        ({**_SELECTED, "portLevelMtls": {8080: "DISABLE"}}, "spec.portLevelMtls.8080", "mapping"),
    ],
)
def test_invalid_peer_authentication(spec: Any, path: str, fragment: str) -> None:
    problem = only_problem(manifest(spec, kind="PeerAuthentication"))
    assert problem.path == path
    assert fragment in problem.message


# -- the manifests in tests/data ----------------------------------------------------------


MALFORMED = sorted((DATA / "malformed").glob("sec-*.yaml"))
VALID = sorted((DATA / "valid").glob("security-*.yaml"))


def test_there_are_enough_malformed_security_manifests() -> None:
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
    assert len(parse_documents(load_files([path]))) >= 1
