"""Parsers for ``security.istio.io`` resources: PeerAuthentication and AuthorizationPolicy."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, cast

from meshware.config.model.common import WorkloadSelector, frozen_map
from meshware.config.model.security import (
    MTLS_MODES,
    AuthorizationAction,
    AuthorizationPolicy,
    AuthorizationPolicySpec,
    Condition,
    ConditionKey,
    MtlsMode,
    Operation,
    PeerAuthentication,
    PeerAuthenticationSpec,
    Rule,
    Source,
    ValueMatch,
    ValueMatchKind,
)
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.reader import Node, type_name

SECURITY_VERSIONS = ("v1", "v1beta1")

T = TypeVar("T")


def parse_selector(node: Node | None) -> WorkloadSelector | None:
    """``selector: {matchLabels: {...}}``; None when absent (namespace- or mesh-wide)."""
    if node is None:
        return None
    labels = node.str_map("matchLabels")
    node.done()
    return WorkloadSelector(frozen_map(labels))


# -- PeerAuthentication -------------------------------------------------------------------


def _mtls_mode(node: Node | None) -> MtlsMode:
    if node is None:
        return "UNSET"
    mode = node.enum("mode", MTLS_MODES, default="UNSET")
    node.done()
    return cast(MtlsMode, mode)


def _port_key(key: Any) -> int:
    """A ``portLevelMtls`` key: YAML reads ``8080:`` as an integer, ``"8080":`` as a string."""
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or not 0 < key < 65536:
        raise ValueError(f"port must be a number between 1 and 65535, got {key!r}")
    return key


def _port_level_mtls(spec: Node, selector: WorkloadSelector | None) -> dict[int, MtlsMode]:
    raw = spec.raw("portLevelMtls")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        spec.error("portLevelMtls", f"must be a mapping of port to mtls, got {type_name(raw)}")
        return {}
    if not raw:
        spec.error("portLevelMtls", "must not be empty when set")
    elif selector is None or not selector.match_labels:
        spec.error(
            "portLevelMtls",
            "portLevelMtls requires a workload selector with matchLabels "
            "(as in Istio, a mesh- or namespace-wide policy cannot set port-level mTLS)",
        )
    port_modes: dict[int, MtlsMode] = {}
    for key, value in raw.items():
        child = Node.root(value, f"{spec.at('portLevelMtls')}.{key}", spec.problems)
        mode = _mtls_mode(child)
        try:
            port_modes[_port_key(key)] = mode
        except ValueError as exc:
            child.error(None, str(exc))
    return port_modes


def parse_peer_authentication(spec: Node, namespace: str) -> PeerAuthenticationSpec:
    selector = parse_selector(spec.node("selector"))
    mode = _mtls_mode(spec.node("mtls"))
    port_modes = _port_level_mtls(spec, selector)
    spec.done()
    return PeerAuthenticationSpec(
        selector=selector, mode=mode, port_modes=MappingProxyType(port_modes)
    )


# -- AuthorizationPolicy: value formats ---------------------------------------------------

_NO_JWT = "meshware has no JWT authentication (RequestAuthentication); match mTLS principals"
_NO_IP = "meshware has no IP-based rules; match mTLS principals or namespaces"
_NO_SERVICE_ACCOUNTS = "write the identity as a principal: cluster.local/ns/NAMESPACE/sa/NAME"
_NO_TARGET_REF = "meshware has no gateways or waypoints; select workloads with selector"

_HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_value_match(value: Any) -> ValueMatch:
    """An Istio authorization value: ``exact``, ``prefix*``, ``*suffix`` or ``*``."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)} {value!r}")
    if not value:
        raise ValueError("must not be empty")
    if value == "*":
        return ValueMatch("present")
    kind: ValueMatchKind
    if value.startswith("*"):
        kind, inner = "suffix", value[1:]
    elif value.endswith("*"):
        kind, inner = "prefix", value[:-1]
    else:
        kind, inner = "exact", value
    if "*" in inner:
        raise ValueError(
            f"invalid value {value!r}: '*' is allowed only alone, at the start "
            "(suffix match, e.g. '*.png') or at the end (prefix match, e.g. '/admin*')"
        )
    return ValueMatch(kind, inner)


def _principal(value: Any) -> ValueMatch:
    match = parse_value_match(value)
    if str(match).startswith("spiffe://"):
        raise ValueError(
            f"invalid principal {value!r}: write it without 'spiffe://', "
            "e.g. 'cluster.local/ns/default/sa/productpage'"
        )
    return match


def _host(value: Any) -> ValueMatch:
    return parse_value_match(value.lower() if isinstance(value, str) else value)


def _path(value: Any) -> ValueMatch:
    if isinstance(value, str) and ("{*}" in value or "{**}" in value):
        raise ValueError(
            f"path templates such as {value!r} ('{{*}}', '{{**}}') are not supported by "
            "meshware; use a prefix match like '/api/*'"
        )
    match = parse_value_match(value)
    if "{" in match.value or "}" in match.value:
        raise ValueError(f"invalid path {value!r}: '{{' and '}}' are not allowed in paths")
    if match.kind in ("exact", "prefix") and not match.value.startswith("/"):
        raise ValueError(f"invalid path {value!r}: must start with '/' ('*' for a suffix match)")
    return match


def parse_port(value: Any) -> int:
    """A port in an authorization policy: Istio writes them as strings of digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'must be a string, got integer {value}; quote it: "{value}"')
    if not isinstance(value, str):
        raise ValueError(f'must be a port string like "8080", got {type_name(value)} {value!r}')
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
        raise ValueError(f"invalid port {value!r}: must be a number between 1 and 65535")
    return int(value)


def _port_value(value: Any) -> ValueMatch:
    return ValueMatch("exact", str(parse_port(value)))


def parse_condition_key(value: Any) -> tuple[ConditionKey, str]:
    """A ``when[].key`` → (key, lower-cased header name for ``request.headers[NAME]``)."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)} {value!r}")
    if not value:
        raise ValueError("must not be empty")
    if value.startswith("request.headers"):
        name = value[len("request.headers[") : -1] if value.endswith("]") else ""
        if not value.startswith("request.headers[") or not name:
            raise ValueError(
                f"invalid key {value!r}: use request.headers[NAME], e.g. request.headers[version]"
            )
        if not _HTTP_TOKEN.match(name):
            raise ValueError(f"invalid key {value!r}: {name!r} is not a valid HTTP header name")
        return "request.headers", name.lower()
    if value in ("source.principal", "source.namespace", "destination.port"):
        return cast(ConditionKey, value), ""
    if value.startswith("request.auth."):
        raise ValueError(f"key {value!r} is not supported by meshware: {_NO_JWT}")
    if value in ("source.ip", "remote.ip", "destination.ip"):
        raise ValueError(f"key {value!r} is not supported by meshware: {_NO_IP}")
    if value == "source.serviceAccount":
        raise ValueError(f"key {value!r} is not supported by meshware: use source.principal")
    if value == "connection.sni" or value.startswith(("experimental.", "request.experimental.")):
        raise ValueError(f"key {value!r} is not supported by meshware")
    if value == "destination.namespace":
        raise ValueError(f"key {value!r} is replaced by the policy's metadata.namespace")
    if value.startswith("destination.labels"):
        raise ValueError(f"key {value!r} is replaced by the policy's selector")
    raise ValueError(
        f"unknown condition key {value!r}; meshware supports request.headers[NAME], "
        "source.principal, source.namespace and destination.port"
    )


def _each(node: Node, key: str, convert: Callable[[Any], T]) -> tuple[T, ...]:
    """The list of scalars at ``key``, each converted; a bad item is reported at ``key[i]``."""
    raw = node.raw(key)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        node.error(key, f"must be a list, got {type_name(raw)}")
        return ()
    out: list[T] = []
    for i, item in enumerate(raw):
        try:
            out.append(convert(item))
        except ValueError as exc:
            node.problems.add(f"{node.at(key)}[{i}]", str(exc))
    return tuple(out)


def _nothing_set(node: Node) -> bool:
    """True when every field of ``node`` is absent, null or empty (Istio's "empty")."""
    return not any(node.data.values())


# -- AuthorizationPolicy: structure -------------------------------------------------------


def _source(node: Node) -> Source:
    source = Source(
        principals=_each(node, "principals", _principal),
        not_principals=_each(node, "notPrincipals", _principal),
        namespaces=_each(node, "namespaces", parse_value_match),
        not_namespaces=_each(node, "notNamespaces", parse_value_match),
    )
    for key in ("requestPrincipals", "notRequestPrincipals"):
        node.unsupported(key, _NO_JWT)
    for key in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
        node.unsupported(key, _NO_IP)
    for key in ("serviceAccounts", "notServiceAccounts"):
        node.unsupported(key, _NO_SERVICE_ACCOUNTS)
    node.done()
    if _nothing_set(node):
        node.error(
            None,
            "must not be empty: set at least one of principals, notPrincipals, "
            "namespaces, notNamespaces",
        )
    return source


def _from(node: Node) -> Source:
    source = node.node("source", required=True)
    node.done()
    return _source(source) if source is not None else Source()


def _operation(node: Node) -> Operation:
    operation = Operation(
        hosts=_each(node, "hosts", _host),
        not_hosts=_each(node, "notHosts", _host),
        ports=_each(node, "ports", parse_port),
        not_ports=_each(node, "notPorts", parse_port),
        methods=_each(node, "methods", parse_value_match),
        not_methods=_each(node, "notMethods", parse_value_match),
        paths=_each(node, "paths", _path),
        not_paths=_each(node, "notPaths", _path),
    )
    node.done()
    if _nothing_set(node):
        node.error(
            None,
            "must not be empty: set at least one of hosts, notHosts, ports, notPorts, "
            "methods, notMethods, paths, notPaths",
        )
    return operation


def _to(node: Node) -> Operation:
    operation = node.node("operation", required=True)
    node.done()
    return _operation(operation) if operation is not None else Operation()


_CONDITION_VALUES: dict[ConditionKey, Callable[[Any], ValueMatch]] = {
    "request.headers": parse_value_match,
    "source.principal": _principal,
    "source.namespace": parse_value_match,
    "destination.port": _port_value,
}


_PLACEHOLDER_KEY: tuple[ConditionKey, str] = ("source.principal", "")


def _condition(node: Node) -> Condition:
    key, header = node.value("key", parse_condition_key, _PLACEHOLDER_KEY, required=True)
    convert = _CONDITION_VALUES[key]
    values = _each(node, "values", convert)
    not_values = _each(node, "notValues", convert)
    node.done()
    # A misspelt field ("value") is already reported by done(); don't pile on.
    only_known = set(node.data) <= {"key", "values", "notValues"}
    if only_known and not node.data.get("values") and not node.data.get("notValues"):
        node.error(None, "must set at least one of values or notValues")
    return Condition(key=key, header=header, values=values, not_values=not_values)


def _rule(node: Node) -> Rule:
    rule = Rule(
        sources=tuple(_from(child) for child in node.nodes("from", nonempty=True)),
        operations=tuple(_to(child) for child in node.nodes("to", nonempty=True)),
        conditions=tuple(_condition(child) for child in node.nodes("when")),
    )
    node.done()
    return rule


def parse_authorization_policy(spec: Node, namespace: str) -> AuthorizationPolicySpec:
    selector = parse_selector(spec.node("selector"))
    action = spec.enum("action", ("ALLOW", "DENY", "AUDIT", "CUSTOM"), default="ALLOW")
    if action == "CUSTOM":
        spec.error(
            "action",
            "CUSTOM authorization is not supported by meshware (it delegates to an "
            "external authorizer); use ALLOW or DENY",
        )
        spec.ignore("provider")  # part of CUSTOM, already reported
        action = "ALLOW"
    spec.unsupported("provider", "it only applies to CUSTOM authorization")
    spec.unsupported("targetRef", _NO_TARGET_REF)
    spec.unsupported("targetRefs", _NO_TARGET_REF)
    rules = tuple(_rule(child) for child in spec.nodes("rules"))
    if action == "DENY" and not spec.data.get("rules"):
        spec.error(
            "rules",
            "a DENY policy without rules never matches anything; "
            "add an empty rule '- {}' to deny every request",
        )
    spec.done()
    return AuthorizationPolicySpec(
        selector=selector, action=cast(AuthorizationAction, action), rules=rules
    )


KINDS: tuple[KindSpec, ...] = (
    KindSpec(PeerAuthentication, SECURITY_VERSIONS, parse_peer_authentication, spec_required=False),
    KindSpec(
        AuthorizationPolicy, SECURITY_VERSIONS, parse_authorization_policy, spec_required=False
    ),
)
