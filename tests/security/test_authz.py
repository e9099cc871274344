"""The AuthorizationPolicy engine: which policies apply to a workload, Istio's evaluation order,
every field and its ``not`` form, ``when`` conditions, plaintext callers, and path-encoding
bypass attempts. Policies are written in Istio YAML and parsed like any applied config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
import yaml

from meshware.config.model.common import ObjectMeta
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.security import (
    AuthorizationPolicy,
    AuthorizationPolicySpec,
    Operation,
    Rule,
    ValueMatch,
)
from meshware.config.parse import load_yaml, parse_documents
from meshware.security.authz import (
    DENIED_BODY,
    DENIED_STATUS,
    MALFORMED_BODY,
    MALFORMED_STATUS,
    Authorizer,
    AuthzRequest,
    Verdict,
    applicable_policies,
)
from meshware.security.paths import normalize_path

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
LABELS = {"app": "reviews", "version": "v2"}


def config(*policies: str | dict[str, Any]) -> MeshConfig:
    """Parse AuthorizationPolicies given as YAML text or as ``{name, namespace?, spec}``."""
    documents: list[str] = []
    for policy in policies:
        if isinstance(policy, str):
            documents.append(policy)
            continue
        metadata = {"name": policy["name"], "namespace": policy.get("namespace", "default")}
        document = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": metadata,
            "spec": policy["spec"],
        }
        documents.append(yaml.safe_dump(document))
    return parse_documents(load_yaml("\n---\n".join(documents), "policies.yaml"))


def authorizer(
    *policies: str | dict[str, Any],
    namespace: str = "default",
    labels: Mapping[str, str] = LABELS,
) -> Authorizer:
    return Authorizer.compile(config(*policies), namespace=namespace, labels=labels)


def request(
    path: str = "/reviews/1",
    *,
    method: str = "GET",
    host: str = "reviews:9080",
    port: int = 9080,
    headers: Mapping[str, str] | None = None,
    principal: str | None = PRODUCTPAGE,
) -> AuthzRequest:
    return AuthzRequest(method, path, host, port, headers or {}, principal)


def allow(name: str = "allow", **spec: Any) -> dict[str, Any]:
    return {"name": name, "spec": {"action": "ALLOW", **spec}}


def deny(name: str = "deny", **spec: Any) -> dict[str, Any]:
    return {"name": name, "spec": {"action": "DENY", **spec}}


def audit(name: str = "audit", **spec: Any) -> dict[str, Any]:
    return {"name": name, "spec": {"action": "AUDIT", **spec}}


EVERYTHING: list[dict[str, Any]] = [{}]
GET_ONLY = [{"to": [{"operation": {"methods": ["GET"]}}]}]
ADMIN = [{"to": [{"operation": {"paths": ["/admin*"]}}]}]


# -- evaluation order ---------------------------------------------------------------------------


def test_no_policy_allows_everything_and_the_middleware_may_skip_check() -> None:
    engine = authorizer()
    assert engine.empty
    assert engine.policies == ()
    verdict = engine.check(request())
    assert verdict == Verdict(True, False, "", "allowed: no ALLOW policy applies")
    assert verdict.status == 200


def test_a_matching_deny_policy_denies() -> None:
    verdict = authorizer(deny(rules=GET_ONLY)).check(request())
    assert verdict == Verdict(False, False, "default/deny", "denied by DENY policy default/deny")
    assert verdict.status == DENIED_STATUS == 403
    assert DENIED_BODY == b"RBAC: access denied"


def test_deny_is_evaluated_before_allow() -> None:
    engine = authorizer(allow(rules=EVERYTHING), deny(rules=GET_ONLY))
    assert engine.check(request()).reason == "denied by DENY policy default/deny"
    assert engine.check(request(method="POST")).reason == "allowed by ALLOW policy default/allow"


def test_without_allow_policies_whatever_no_deny_policy_matches_is_allowed() -> None:
    verdict = authorizer(deny(rules=GET_ONLY)).check(request(method="POST"))
    assert verdict == Verdict(True, False, "", "allowed: no ALLOW policy applies")


def test_with_allow_policies_only_what_one_of_them_matches_is_allowed() -> None:
    engine = authorizer(allow(rules=GET_ONLY))
    assert engine.check(request()) == Verdict(
        True, False, "default/allow", "allowed by ALLOW policy default/allow"
    )
    assert engine.check(request(method="POST")) == Verdict(
        False, False, "", "denied: no ALLOW policy matched"
    )


def test_any_matching_allow_policy_is_enough() -> None:
    posts = [{"to": [{"operation": {"methods": ["POST"]}}]}]
    engine = authorizer(allow("gets", rules=GET_ONLY), allow("posts", rules=posts))
    assert engine.check(request()).policy == "default/gets"
    assert engine.check(request(method="POST")).policy == "default/posts"
    assert not engine.check(request(method="PUT")).allowed


def test_allow_nothing_spec_denies_everything() -> None:
    engine = authorizer({"name": "allow-nothing", "spec": {}})
    assert not engine.empty
    for probe in (request(), request("/", method="POST"), request(principal=None)):
        assert engine.check(probe) == Verdict(False, False, "", "denied: no ALLOW policy matched")


def test_allow_nothing_plus_a_specific_allow_policy_allows_just_that() -> None:
    # Istio's recommended pattern: deny by default, then open what is needed.
    engine = authorizer({"name": "allow-nothing", "spec": {}}, allow(rules=GET_ONLY))
    assert engine.check(request()).allowed
    assert not engine.check(request(method="DELETE")).allowed


def test_an_empty_rule_allows_everything() -> None:
    engine = authorizer(allow(rules=EVERYTHING))
    for probe in (request(), request("/x", method="DELETE", principal=None, host="")):
        assert engine.check(probe).reason == "allowed by ALLOW policy default/allow"


def test_an_empty_rule_in_a_deny_policy_denies_everything() -> None:
    engine = authorizer(deny(rules=EVERYTHING), allow(rules=EVERYTHING))
    assert engine.check(request(principal=None)).reason == "denied by DENY policy default/deny"


def _policy(name: str, action: Any, rules: tuple[Rule, ...] = ()) -> AuthorizationPolicy:
    spec = AuthorizationPolicySpec(action=action, rules=rules)
    return AuthorizationPolicy("security.istio.io/v1", ObjectMeta(name), spec)


def test_deny_and_audit_policies_without_rules_match_nothing() -> None:
    # The parser refuses a rule-less DENY; the engine still gives it Istio's meaning.
    engine = Authorizer([_policy("deny", "DENY"), _policy("audit", "AUDIT")])
    assert engine.empty
    assert engine.policies == ("default/deny", "default/audit")
    assert engine.check(request()) == Verdict(True, False, "", "allowed: no ALLOW policy applies")


def test_audit_policies_mark_without_deciding() -> None:
    marks_gets = audit(rules=GET_ONLY)
    alone = authorizer(marks_gets)
    assert not alone.empty
    assert alone.check(request()) == Verdict(True, True, "", "allowed: no ALLOW policy applies")
    assert alone.check(request(method="POST")) == Verdict(
        True, False, "", "allowed: no ALLOW policy applies"
    )
    allowed = authorizer(marks_gets, allow(rules=EVERYTHING)).check(request())
    assert (allowed.allowed, allowed.audit, allowed.policy) == (True, True, "default/allow")
    denied = authorizer(marks_gets, deny(rules=EVERYTHING)).check(request())
    assert (denied.allowed, denied.audit, denied.policy) == (False, True, "default/deny")
    unmatched = authorizer(marks_gets, allow(rules=ADMIN)).check(request())
    assert (unmatched.allowed, unmatched.audit) == (False, True)


def test_policy_order_names_the_first_matching_policy() -> None:
    engine = authorizer(deny("b-deny", rules=EVERYTHING), deny("a-deny", rules=GET_ONLY))
    assert engine.policies == ("default/a-deny", "default/b-deny")
    assert engine.check(request()).policy == "default/a-deny"
    assert engine.check(request(method="POST")).policy == "default/b-deny"


def test_verdict_status() -> None:
    assert Verdict(True, False, "", "").status == 200
    assert Verdict(False, False, "", "").status == 403
    assert Verdict(False, False, "", "", malformed=True).status == MALFORMED_STATUS == 400
    assert MALFORMED_BODY == b"Bad Request"


# -- which policies apply --------------------------------------------------------------------

SELECTION = [
    # (policy namespace, selector labels or None, workload namespace, workload labels, applies)
    ("default", None, "default", LABELS, True),
    ("default", None, "prod", LABELS, False),
    ("prod", None, "default", LABELS, False),
    ("default", {"app": "reviews"}, "default", LABELS, True),
    ("default", {"app": "reviews", "version": "v2"}, "default", LABELS, True),
    ("default", {"app": "reviews", "version": "v3"}, "default", LABELS, False),
    ("default", {"app": "ratings"}, "default", LABELS, False),
    ("default", {"team": "x"}, "default", {}, False),
    ("default", {}, "default", {}, True),  # empty matchLabels: every workload
    ("prod", {"app": "reviews"}, "default", LABELS, False),
    ("istio-system", None, "default", LABELS, True),  # root namespace: mesh-wide
    ("istio-system", None, "prod", {}, True),
    ("istio-system", {"app": "reviews"}, "prod", LABELS, True),  # root + selector: any namespace
    ("istio-system", {"app": "ratings"}, "prod", LABELS, False),
    ("istio-system", None, "istio-system", {}, True),
    ("kube-system", None, "default", LABELS, False),
]


@pytest.mark.parametrize(("policy_ns", "selector", "workload_ns", "labels", "applies"), SELECTION)
def test_which_policies_apply(
    policy_ns: str,
    selector: dict[str, str] | None,
    workload_ns: str,
    labels: dict[str, str],
    applies: bool,
) -> None:
    spec: dict[str, Any] = {"action": "DENY", "rules": EVERYTHING}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    mesh = config({"name": "p", "namespace": policy_ns, "spec": spec})
    found = applicable_policies(mesh, namespace=workload_ns, labels=labels)
    assert [p.ref for p in found] == ([mesh.of(AuthorizationPolicy)[0].ref] if applies else [])
    engine = Authorizer.compile(mesh, namespace=workload_ns, labels=labels)
    assert engine.empty is not applies
    assert engine.check(request()).allowed is not applies


def test_namespace_and_mesh_policies_combine() -> None:
    no_delete = [{"to": [{"operation": {"methods": ["DELETE"]}}]}]
    mesh_deny = {**deny("no-delete", rules=no_delete), "namespace": "istio-system"}
    engine = authorizer(mesh_deny, allow(rules=EVERYTHING))
    assert engine.policies == ("default/allow", "istio-system/no-delete")
    assert engine.check(request(method="DELETE")).policy == "istio-system/no-delete"
    assert engine.check(request()).policy == "default/allow"


def test_compile_ignores_other_kinds() -> None:
    mesh = parse_documents(
        load_yaml(
            """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
""",
            "mesh.yaml",
        )
    )
    assert Authorizer.compile(mesh, namespace="default", labels=LABELS).empty


# -- fields: values, prefix/suffix/presence, and the not forms ------------------------------

# (operation or source, request changes, matches)
FIELDS: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # principals: compared without spiffe://
    ("from", {"principals": ["cluster.local/ns/default/sa/productpage"]}, {}, True),
    ("from", {"principals": ["cluster.local/ns/default/sa/details"]}, {}, False),
    ("from", {"principals": ["cluster.local/ns/default/*"]}, {}, True),
    ("from", {"principals": ["*/sa/productpage"]}, {}, True),
    ("from", {"principals": ["*/sa/ratings"]}, {}, False),
    ("from", {"principals": ["*"]}, {}, True),
    ("from", {"principals": ["a", "b", "cluster.local/ns/default/sa/productpage"]}, {}, True),
    ("from", {"notPrincipals": ["cluster.local/ns/default/sa/productpage"]}, {}, False),
    ("from", {"notPrincipals": ["cluster.local/ns/default/sa/details"]}, {}, True),
    ("from", {"notPrincipals": ["cluster.local/ns/default/sa/product*"]}, {}, False),
    (
        "from",
        {"principals": ["cluster.local/*"], "notPrincipals": ["*/sa/productpage"]},
        {},
        False,
    ),
    # namespaces: taken from the principal's /ns/<namespace>/
    ("from", {"namespaces": ["default"]}, {}, True),
    ("from", {"namespaces": ["prod"]}, {}, False),
    ("from", {"namespaces": ["def*"]}, {}, True),
    ("from", {"namespaces": ["*ault"]}, {}, True),
    ("from", {"namespaces": ["*"]}, {}, True),
    ("from", {"notNamespaces": ["default"]}, {}, False),
    ("from", {"notNamespaces": ["prod", "staging"]}, {}, True),
    ("from", {"namespaces": ["default"]}, {"principal": "spiffe://td/ns/prod/sa/x"}, False),
    ("from", {"namespaces": ["prod"]}, {"principal": "spiffe://td/ns/prod/sa/x"}, True),
    # a principal without /ns/<namespace>/ has no namespace
    ("from", {"namespaces": ["*"]}, {"principal": "spiffe://td/workload/x"}, False),
    ("from", {"notNamespaces": ["prod"]}, {"principal": "spiffe://td/workload/x"}, True),
    # every field of a source must match
    ("from", {"principals": ["*"], "namespaces": ["prod"]}, {}, False),
    ("from", {"principals": ["*/sa/productpage"], "notNamespaces": ["prod"]}, {}, True),
    # hosts: the Host header as sent, port included, case-insensitive
    ("to", {"hosts": ["reviews:9080"]}, {}, True),
    ("to", {"hosts": ["REVIEWS:9080"]}, {}, True),
    ("to", {"hosts": ["reviews:9080"]}, {"host": "Reviews:9080"}, True),
    ("to", {"hosts": ["reviews"]}, {}, False),  # exact: the port is part of the Host header
    ("to", {"hosts": ["reviews"]}, {"host": "reviews"}, True),
    ("to", {"hosts": ["reviews", "reviews:*"]}, {}, True),  # Istio's advice for any port
    ("to", {"hosts": ["*.example.com"]}, {"host": "API.Example.COM"}, True),
    ("to", {"hosts": ["*.example.com"]}, {"host": "example.com"}, False),
    ("to", {"hosts": ["*"]}, {}, True),
    ("to", {"hosts": ["*"]}, {"host": ""}, False),  # no Host header
    ("to", {"notHosts": ["reviews:9080"]}, {}, False),
    ("to", {"notHosts": ["Reviews:*"]}, {}, False),
    ("to", {"notHosts": ["ratings:*"]}, {}, True),
    ("to", {"notHosts": ["reviews:9080"]}, {"host": ""}, True),
    # ports: the destination port
    ("to", {"ports": ["9080"]}, {}, True),
    ("to", {"ports": ["8080", "9080"]}, {}, True),
    ("to", {"ports": ["8080"]}, {}, False),
    ("to", {"ports": ["8080"]}, {"port": 8080, "host": "reviews:9080"}, True),
    ("to", {"notPorts": ["9080"]}, {}, False),
    ("to", {"notPorts": ["15000"]}, {}, True),
    # methods: exact names (and Istio's prefix/suffix/presence forms)
    ("to", {"methods": ["GET"]}, {}, True),
    ("to", {"methods": ["GET", "HEAD"]}, {"method": "HEAD"}, True),
    ("to", {"methods": ["POST"]}, {}, False),
    ("to", {"methods": ["P*"]}, {"method": "PATCH"}, True),
    ("to", {"methods": ["*"]}, {"method": "PURGE"}, True),
    ("to", {"notMethods": ["GET"]}, {}, False),
    ("to", {"notMethods": ["DELETE", "PUT"]}, {}, True),
    ("to", {"methods": ["*"], "notMethods": ["DELETE"]}, {"method": "DELETE"}, False),
    # paths: exact, prefix, suffix, presence; after normalisation
    ("to", {"paths": ["/reviews/1"]}, {}, True),
    ("to", {"paths": ["/reviews"]}, {}, False),
    ("to", {"paths": ["/reviews/*"]}, {}, True),
    ("to", {"paths": ["/reviews*"]}, {"path": "/reviewsXYZ"}, True),
    ("to", {"paths": ["/reviews/*"]}, {"path": "/reviews"}, False),
    ("to", {"paths": ["*.png"]}, {"path": "/img/logo.png"}, True),
    ("to", {"paths": ["*.png"]}, {"path": "/img/logo.PNG"}, False),
    ("to", {"paths": ["*"]}, {"path": "/"}, True),
    ("to", {"paths": ["/reviews/1"]}, {"path": "/reviews/1?x=1"}, True),
    ("to", {"paths": ["/reviews/1"]}, {"path": "//reviews/./2/../1"}, True),
    ("to", {"notPaths": ["/reviews/*"]}, {}, False),
    ("to", {"notPaths": ["/healthz", "/metrics"]}, {}, True),
    ("to", {"paths": ["/reviews/*"], "notPaths": ["/reviews/1"]}, {}, False),
    ("to", {"paths": ["/reviews/*"], "notPaths": ["/reviews/1"]}, {"path": "/reviews/2"}, True),
    # policy values with escapes are compared in the normalised escape form
    ("to", {"paths": ["/a%3ab"]}, {"path": "/a%3Ab"}, True),
    ("to", {"paths": ["/a%3Ab"]}, {"path": "/a%3ab"}, True),
    ("to", {"paths": ["/%61dmin"]}, {"path": "/admin"}, True),
    # every field of an operation must match
    ("to", {"methods": ["GET"], "paths": ["/reviews/*"], "ports": ["9080"]}, {}, True),
    ("to", {"methods": ["GET"], "paths": ["/reviews/*"], "ports": ["8080"]}, {}, False),
    ("to", {"hosts": ["reviews:*"], "notMethods": ["GET"]}, {}, False),
]


@pytest.mark.parametrize(
    ("side", "fields", "changes", "matches"),
    FIELDS,
    ids=[f"{side}-{fields}-{changes}" for side, fields, changes, _ in FIELDS],
)
def test_field(side: str, fields: dict[str, Any], changes: dict[str, Any], matches: bool) -> None:
    key = "source" if side == "from" else "operation"
    rules = [{side: [{key: fields}]}]
    probe = request(**changes)
    assert authorizer(allow(rules=rules)).check(probe).allowed is matches
    assert authorizer(deny(rules=rules)).check(probe).allowed is not matches


# -- rules: from OR, to OR, from AND to AND when -----------------------------------------------

RULES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"from": [{"source": {"namespaces": ["prod"]}}, {"source": {"namespaces": ["default"]}}]},
     {}, True),
    ({"from": [{"source": {"namespaces": ["prod"]}}, {"source": {"namespaces": ["qa"]}}]},
     {}, False),
    ({"to": [{"operation": {"methods": ["POST"]}}, {"operation": {"paths": ["/reviews/*"]}}]},
     {}, True),
    ({"to": [{"operation": {"methods": ["POST"]}}, {"operation": {"paths": ["/x"]}}]}, {}, False),
    ({"from": [{"source": {"namespaces": ["default"]}}],
      "to": [{"operation": {"methods": ["GET"]}}]}, {}, True),
    ({"from": [{"source": {"namespaces": ["default"]}}],
      "to": [{"operation": {"methods": ["POST"]}}]}, {}, False),
    ({"from": [{"source": {"namespaces": ["prod"]}}],
      "to": [{"operation": {"methods": ["GET"]}}]}, {}, False),
    ({"from": [{"source": {"namespaces": ["default"]}}],
      "to": [{"operation": {"methods": ["GET"]}}],
      "when": [{"key": "request.headers[x-user]", "values": ["jason"]}]},
     {"headers": {"x-user": "jason"}}, True),
    ({"from": [{"source": {"namespaces": ["default"]}}],
      "to": [{"operation": {"methods": ["GET"]}}],
      "when": [{"key": "request.headers[x-user]", "values": ["jason"]}]},
     {"headers": {"x-user": "alice"}}, False),
    ({"when": [{"key": "request.headers[x-user]", "values": ["jason"]},
               {"key": "destination.port", "values": ["9080"]}]},
     {"headers": {"x-user": "jason"}}, True),
    ({"when": [{"key": "request.headers[x-user]", "values": ["jason"]},
               {"key": "destination.port", "values": ["8080"]}]},
     {"headers": {"x-user": "jason"}}, False),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "changes", "matches"), RULES)
def test_rule_structure(rule: dict[str, Any], changes: dict[str, Any], matches: bool) -> None:
    assert authorizer(allow(rules=[rule])).check(request(**changes)).allowed is matches


def test_a_policy_matches_when_any_rule_does() -> None:
    rules = [
        {"to": [{"operation": {"methods": ["POST"]}}]},
        {"to": [{"operation": {"paths": ["/reviews/*"]}}]},
    ]
    engine = authorizer(allow(rules=rules))
    assert engine.check(request("/x", method="POST")).allowed
    assert engine.check(request("/reviews/2")).allowed
    assert not engine.check(request("/x")).allowed


# -- when conditions -------------------------------------------------------------------------

WHEN: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"key": "request.headers[x-user]", "values": ["jason"]}, {"x-user": "jason"}, True),
    ({"key": "request.headers[x-user]", "values": ["jason"]}, {"x-user": "Jason"}, False),
    ({"key": "request.headers[X-User]", "values": ["jason"]}, {"x-user": "jason"}, True),
    ({"key": "request.headers[x-user]", "values": ["jas*"]}, {"x-user": "jasmine"}, True),
    ({"key": "request.headers[x-user]", "values": ["*son"]}, {"x-user": "jason"}, True),
    ({"key": "request.headers[x-user]", "values": ["jason"]}, {}, False),
    ({"key": "request.headers[x-user]", "values": ["*"]}, {"x-user": "anyone"}, True),
    ({"key": "request.headers[x-user]", "values": ["*"]}, {"x-user": ""}, True),  # present
    ({"key": "request.headers[x-user]", "values": ["*"]}, {}, False),
    ({"key": "request.headers[x-user]", "notValues": ["jason"]}, {"x-user": "jason"}, False),
    ({"key": "request.headers[x-user]", "notValues": ["jason"]}, {"x-user": "alice"}, True),
    ({"key": "request.headers[x-user]", "notValues": ["jason"]}, {}, True),  # absent
    ({"key": "request.headers[x-user]", "notValues": ["*"]}, {}, True),
    ({"key": "request.headers[x-user]", "notValues": ["*"]}, {"x-user": ""}, False),
    ({"key": "request.headers[x-user]", "values": ["*"], "notValues": ["jason"]},
     {"x-user": "alice"}, True),
    ({"key": "request.headers[x-user]", "values": ["*"], "notValues": ["jason"]},
     {"x-user": "jason"}, False),
    ({"key": "request.headers[x-user]", "values": ["a,b"]}, {"x-user": "a,b"}, True),
    ({"key": "source.principal", "values": ["cluster.local/ns/default/sa/productpage"]}, {}, True),
    ({"key": "source.principal", "values": ["*/sa/details"]}, {}, False),
    ({"key": "source.principal", "notValues": ["*/sa/productpage"]}, {}, False),
    ({"key": "source.namespace", "values": ["default"]}, {}, True),
    ({"key": "source.namespace", "values": ["prod"]}, {}, False),
    ({"key": "source.namespace", "notValues": ["prod"]}, {}, True),
    ({"key": "destination.port", "values": ["9080"]}, {}, True),
    ({"key": "destination.port", "values": ["8080", "9443"]}, {}, False),
    ({"key": "destination.port", "notValues": ["9080"]}, {}, False),
]  # fmt: skip


@pytest.mark.parametrize(("condition", "headers", "matches"), WHEN)
def test_when_condition(condition: dict[str, Any], headers: dict[str, str], matches: bool) -> None:
    engine = authorizer(allow(rules=[{"when": [condition]}]))
    assert engine.check(request(headers=headers)).allowed is matches


# -- plaintext callers (no peer identity) -----------------------------------------------------

PLAINTEXT: list[tuple[dict[str, Any], bool]] = [
    # mTLS-only fields never match a plaintext request ...
    ({"from": [{"source": {"principals": ["*"]}}]}, False),
    ({"from": [{"source": {"principals": ["cluster.local/*"]}}]}, False),
    ({"from": [{"source": {"namespaces": ["*"]}}]}, False),
    ({"from": [{"source": {"namespaces": ["default"]}}]}, False),
    ({"when": [{"key": "source.principal", "values": ["*"]}]}, False),
    ({"when": [{"key": "source.namespace", "values": ["default"]}]}, False),
    # ... and their not forms never exclude it (ISTIO-SECURITY-2021-004)
    ({"from": [{"source": {"notPrincipals": ["*"]}}]}, True),
    ({"from": [{"source": {"notPrincipals": ["cluster.local/ns/default/sa/productpage"]}}]}, True),
    ({"from": [{"source": {"notNamespaces": ["default"]}}]}, True),
    ({"when": [{"key": "source.principal", "notValues": ["*"]}]}, True),
    ({"when": [{"key": "source.namespace", "notValues": ["default"]}]}, True),
    ({"from": [{"source": {"principals": ["*"], "notNamespaces": ["prod"]}}]}, False),
    # fields that do not depend on the identity still apply
    ({"to": [{"operation": {"paths": ["/reviews/*"]}}]}, True),
]


@pytest.mark.parametrize(("rule", "matches"), PLAINTEXT)
def test_plaintext_caller(rule: dict[str, Any], matches: bool) -> None:
    engine = authorizer(allow(rules=[rule]))
    assert engine.check(request(principal=None)).allowed is matches


def test_deny_not_principals_star_refuses_exactly_the_plaintext_requests() -> None:
    engine = authorizer(
        deny("require-mtls", rules=[{"from": [{"source": {"notPrincipals": ["*"]}}]}])
    )
    assert engine.check(request(principal=None)).reason == (
        "denied by DENY policy default/require-mtls"
    )
    assert engine.check(request()).allowed


def test_allow_not_namespaces_lets_a_plaintext_caller_through_as_istio_warns() -> None:
    engine = authorizer(allow(rules=[{"from": [{"source": {"notNamespaces": ["foo"]}}]}]))
    assert not engine.check(request(principal="spiffe://cluster.local/ns/foo/sa/x")).allowed
    assert engine.check(request(principal=None)).allowed


def test_a_principal_without_the_spiffe_scheme_is_read_the_same() -> None:
    engine = authorizer(allow(rules=[{"from": [{"source": {"namespaces": ["default"]}}]}]))
    assert engine.check(request(principal="cluster.local/ns/default/sa/productpage")).allowed


# -- path-encoding bypass attempts --------------------------------------------------------------

# Every spelling that reaches /admin (or below it) in a backend: denied by `paths: ["/admin*"]`,
# or refused as malformed; never allowed.
BYPASSES = [
    "/admin",
    "/admin/",
    "/admin/users",
    "//admin",
    "///admin//users",
    "/./admin",
    "/foo/../admin",
    "/a/b/../../admin",
    "/../admin",
    "/%61dmin",
    "/%61%64%6D%69%6E",
    "/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/admin%2fsecret",
    "/admin%2Fsecret",
    "/%2Fadmin",
    "/%2f%2fadmin",
    "/%5Cadmin",
    "/%5cadmin",
    "/\\admin",
    "/x\\..\\admin",
    "/x/..%2Fadmin",
    "/x/..%5Cadmin",
    "/x%2F..%2Fadmin",
    "/admin?x=/public",
    "/admin/../admin",
    "/x//../admin",
    "/administrators-guide",  # a prefix match: /admin* covers it too, as in Istio
]


@pytest.mark.parametrize("path", BYPASSES)
def test_bypass_attempts_against_a_deny_policy_are_denied(path: str) -> None:
    engine = authorizer(deny("deny-admin", rules=ADMIN))
    verdict = engine.check(request(path))
    assert not verdict.allowed
    assert verdict.policy == "default/deny-admin"
    assert verdict.status == 403


MALFORMED_ATTEMPTS = [
    "/admin%00",
    "/admin%00.html",
    "/%00/admin",
    "/adm%in",
    "/admin%2",
    "/admin#",
    "/public#/../admin",
    "/admin\x00",
    "/adm in",
    "%2Fadmin",
    "\\admin",
    "admin",
]


@pytest.mark.parametrize("path", MALFORMED_ATTEMPTS)
def test_malformed_bypass_attempts_are_refused_before_any_policy(path: str) -> None:
    engine = authorizer(deny("deny-admin", rules=ADMIN))
    verdict = engine.check(request(path))
    assert verdict == Verdict(False, False, "", "malformed request path", malformed=True)
    assert verdict.status == 400


# Spellings that normalise to somewhere else than /admin: allowed, as by Istio. The middleware
# must forward the normalised path, so the backend serves what was authorized.
ELSEWHERE = [
    ("/admin%2F..", "/"),
    ("/admin/..", "/"),
    ("/admin/x/../..", "/"),
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once: not '..'
    ("/adm%2569n", "/adm%2569n"),
    ("/public/admin", "/public/admin"),
    ("/ADMIN", "/ADMIN"),  # paths are case-sensitive in Istio: see docs/security.md
    ("/Admin/users", "/Admin/users"),
]


@pytest.mark.parametrize(("path", "normalised"), ELSEWHERE)
def test_paths_that_normalise_elsewhere_are_not_admin(path: str, normalised: str) -> None:
    assert normalize_path(path) == normalised
    assert authorizer(deny("deny-admin", rules=ADMIN)).check(request(path)).allowed


PUBLIC_ONLY = [{"to": [{"operation": {"paths": ["/public/*"]}}]}]
ESCAPES_FROM_PUBLIC = [
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public%2f..%2fadmin",
    "/public/..%2fadmin",
    "/public/..%5cadmin",
    "/public\\..\\admin",
    "/public//../../admin",
    "/public/./../admin",
]


@pytest.mark.parametrize("path", ESCAPES_FROM_PUBLIC)
def test_escapes_from_an_allow_listed_prefix_are_denied(path: str) -> None:
    engine = authorizer(allow("public", rules=PUBLIC_ONLY))
    assert not engine.check(request(path)).allowed
    assert engine.check(request("/public/index.html")).allowed
    assert engine.check(request("/public/a/../b")).allowed


def test_allow_policies_see_the_normalised_path_too() -> None:
    engine = authorizer(
        allow("reviews", rules=[{"to": [{"operation": {"paths": ["/reviews/1"]}}]}])
    )
    for path in ("/reviews/1", "//reviews//1", "/x/../reviews/1", "/%72eviews/%31", "/reviews/1?a"):
        assert engine.check(request(path)).allowed, path


# -- malformed requests ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "Get", "pOST", ""])
def test_a_method_with_lower_case_letters_is_refused_as_istio_does(method: str) -> None:
    verdict = authorizer(allow(rules=EVERYTHING)).check(request(method=method))
    assert verdict == Verdict(
        False, False, "", "malformed request method (not upper case)", malformed=True
    )


@pytest.mark.parametrize("method", ["GET", "M-SEARCH", "PROPFIND", "BREW"])
def test_upper_case_methods_are_accepted(method: str) -> None:
    assert authorizer(allow(rules=EVERYTHING)).check(request(method=method)).allowed


def test_malformed_requests_are_not_checked_when_no_policy_applies() -> None:
    engine = authorizer()
    assert engine.check(request("/a%00", method="get")).allowed


def test_malformed_requests_are_refused_even_by_an_allow_everything_policy() -> None:
    engine = authorizer(allow(rules=EVERYTHING))
    assert engine.check(request("/a%00")).malformed


# -- the compiled form ----------------------------------------------------------------------------


def test_a_policy_built_in_code_compiles_like_a_parsed_one() -> None:
    rule = Rule(operations=(Operation(paths=(ValueMatch("prefix", "/admin"),)),))
    policy = _policy("deny-admin", "DENY", (rule,))
    engine = Authorizer([policy])
    assert not engine.check(request("/%61dmin/x")).allowed
    assert engine.check(request("/public")).allowed
    assert repr(engine) == "Authorizer(default/deny-admin)"
    changed = replace(policy, spec=replace(policy.spec, action="AUDIT"))
    assert Authorizer([changed]).check(request("/admin")).audit


def test_header_names_lists_the_headers_conditions_read() -> None:
    reads = [
        {"when": [{"key": "request.headers[X-User]", "values": ["jason"]}]},
        {"when": [{"key": "request.headers[x-version]", "notValues": ["v1"]}]},
    ]
    assert authorizer(allow(rules=reads)).header_names == {"x-user", "x-version"}
    assert authorizer(deny(rules=ADMIN)).header_names == frozenset()


def test_check_is_safe_to_share_between_requests() -> None:
    engine = authorizer(deny(rules=ADMIN), allow(rules=GET_ONLY))
    first = engine.check(request("/admin"))
    for _ in range(3):
        assert engine.check(request("/reviews/1")).allowed
        assert engine.check(request("/admin")) is first  # precomputed verdicts, no allocation
