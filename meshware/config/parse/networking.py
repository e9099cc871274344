"""Parsers for ``networking.istio.io`` resources: VirtualService, DestinationRule, ServiceEntry.

Validation follows Istio's own (``pkg/config/validation``) wherever meshware implements the
feature; every Istio field meshware does not implement is declared with
:meth:`Node.unsupported` so that it is rejected with a reason instead of ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

from meshware.config.model.common import StringMatch, WorkloadSelector, frozen_map
from meshware.config.model.networking import (
    DEFAULT_RETRY_ON,
    GRPC_RETRY_CONDITIONS,
    HTTP_RETRY_CONDITIONS,
    SERVICE_PROTOCOLS,
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    Destination,
    DestinationRule,
    DestinationRuleSpec,
    FaultAbort,
    FaultDelay,
    H2UpgradePolicy,
    HeaderOperations,
    Headers,
    HTTPCookie,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPSettings,
    LoadBalancerAlgorithm,
    LoadBalancerSettings,
    Location,
    OutlierDetection,
    Resolution,
    RouteDestination,
    ServiceEntry,
    ServiceEntrySpec,
    ServicePort,
    ServiceProtocol,
    Subset,
    TCPSettings,
    TLSMode,
    TrafficPolicy,
    VirtualService,
    VirtualServiceSpec,
    WorkloadEntry,
)
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.reader import Node, type_name
from meshware.config.parse.security import parse_selector
from meshware.config.parse.values import duration, parse_host, parse_namespace, parse_regex

NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")

K = TypeVar("K")
V = TypeVar("V")

_MESH_GATEWAY = "mesh"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ENVOY_VARIABLE = re.compile(r"%[A-Z_][A-Z0-9_]*(\([^)]*\))?(:\d+)?%")
_MAX_REGEX_LENGTH = 1024


def _frozen(values: Mapping[K, V]) -> Mapping[K, V]:
    return MappingProxyType(dict(values))


# -- shared field readers ---------------------------------------------------------------------


def _indexed_strings(
    node: Node, key: str, *, required: bool = False, nonempty: bool = False
) -> list[tuple[str, str]]:
    """The strings of a list field with each one's path (``hosts[2]``) for messages."""
    node.str_list(key, required=required, nonempty=nonempty)  # records type problems
    raw = node.data.get(key)
    if not isinstance(raw, list):
        return []
    return [(f"{node.at(key)}[{i}]", item) for i, item in enumerate(raw) if isinstance(item, str)]


def _hosts(node: Node, key: str, kind: str) -> tuple[str, ...]:
    """``hosts`` of a VirtualService or ServiceEntry: required, valid, no ``*``, no repeats."""
    out: list[str] = []
    for path, raw in _indexed_strings(node, key, required=True, nonempty=True):
        try:
            host = parse_host(raw)
        except ValueError as exc:
            node.problems.add(path, str(exc))
            continue
        if host == "*":
            node.problems.add(path, f"the wildcard host '*' is not allowed in a {kind}")
            continue
        if host in out:
            node.problems.add(path, f"host {host!r} is listed twice")
            continue
        out.append(host)
    return tuple(out)


def _export_to(node: Node, namespace: str, *, allow_none: bool = False) -> tuple[str, ...]:
    """``exportTo``: ``.``, ``*``, namespace names (and ``~`` for ServiceEntry)."""
    entries = _indexed_strings(node, "exportTo")
    seen: set[str] = set()
    out: list[str] = []
    for path, value in entries:
        key = namespace if value == "." else value
        if key in seen:
            node.problems.add(path, f"duplicate exportTo entry {value!r}")
            continue
        if value == "~" and not allow_none:
            node.problems.add(path, "'~' (export to no one) is only allowed for ServiceEntry")
            continue
        if value not in (".", "*", "~"):
            try:
                parse_namespace(value)
            except ValueError as exc:
                node.problems.add(path, f"{exc}; use '.', '*' or a namespace name")
                continue
        seen.add(key)
        out.append(value)
    if len(entries) > 1 and "*" in out:
        node.error("exportTo", "cannot mix '*' (every namespace) with other entries")
    if len(entries) > 1 and "~" in out:
        node.error("exportTo", "cannot mix '~' (no one) with other entries")
    return tuple(out)


def _gateways(node: Node, key: str) -> tuple[str, ...]:
    """``gateways``: meshware has only the implicit ``mesh`` gateway."""
    gateways = node.str_list(key)
    if any(g != _MESH_GATEWAY for g in gateways):
        node.error(
            key,
            "is not supported by meshware: there are no ingress/egress gateways; "
            "omit gateways or use [mesh]",
        )
    return tuple(gateways)


def _labels(node: Node, key: str) -> Mapping[str, str]:
    """A Kubernetes label map (``sourceLabels``, subset ``labels``), keys and values checked."""
    labels = node.str_map(key)
    for name, value in labels.items():
        path = f"{node.at(key)}.{name}"
        prefix, slash, base = name.rpartition("/")
        prefix_ok = not slash or (
            0 < len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix) is not None
        )
        if not prefix_ok or not base or len(base) > 63 or not _LABEL_PART.match(base):
            node.problems.add(path, f"invalid label name {name!r}")
        elif value and (len(value) > 63 or not _LABEL_PART.match(value)):
            node.problems.add(
                path,
                f"invalid label value {value!r}: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit",
            )
    return frozen_map(labels)


def _check_header_name(node: Node, path: str, name: str, *, operation: str = "") -> str:
    """Validate an HTTP header name and return it lower-cased."""
    if not name:
        node.problems.add(path, "header name must not be empty")
    elif name.startswith(":"):
        hint = "use rewrite.authority" if operation else "use the uri/method/scheme/authority match"
        node.problems.add(path, f"pseudo-header {name!r} cannot be used here; {hint}")
    elif not _HEADER_NAME.match(name):
        node.problems.add(path, f"invalid header name {name!r}")
    elif operation and name.lower() == "host":
        node.problems.add(path, f"cannot {operation} the Host header; use rewrite.authority")
    return name.lower()


def _check_header_value(node: Node, path: str, value: str) -> str:
    """A header value to send: no control characters, no Envoy ``%VARIABLE%`` substitutions."""
    if _HEADER_VALUE_BAD.search(value):
        node.problems.add(path, "header value must not contain control characters")
        return value
    if _ENVOY_VARIABLE.search(value.replace("%%", "")):
        node.problems.add(
            path,
            "is not supported by meshware: Envoy header variables like %HOSTNAME% are not "
            "expanded; write a literal value ('%%' for a percent sign)",
        )
        return value
    if "%" in value.replace("%%", ""):
        node.problems.add(path, "a literal '%' must be written '%%' (as in Envoy)")
        return value
    return value.replace("%%", "%")


def _percent(node: Node, key: str) -> float | None:
    """Istio's ``Percent`` message, ``{value: 12.5}``: a float between 0 and 100."""
    raw = node.data.get(key)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        node.raw(key)
        node.error(key, f"must be a mapping like {{value: {raw}}}, got a bare number")
        return None
    child = node.node(key)
    if child is None:
        return None
    value = child.number("value", minimum=0.0, maximum=100.0)
    child.done()
    return value


def _optional_port(node: Node, key: str) -> int | None:
    if not node.has(key):
        node.raw(key)
        return None
    port = node.integer(key, minimum=1, maximum=65535)
    return port or None


def _subset_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value:
        raise ValueError("subset name must not be empty")
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"invalid subset name {value!r}: use lower-case letters, digits and '-', starting "
            "and ending with a letter or digit (a DNS-1123 label)"
        )
    return value


def _destination(node: Node | None) -> Destination:
    """``destination``/``mirror``: ``{host, subset, port: {number}}``."""
    if node is None:
        return Destination("")
    host = node.value("host", parse_host, "", required=True)
    if host == "*" or host.startswith("*."):
        node.error("host", f"must name one service, not a wildcard ({host!r})")
    subset = node.value("subset", _subset_name, "")
    port: int | None = None
    port_node = node.node("port")
    if port_node is not None:
        port = port_node.integer("number", required=True, minimum=1, maximum=65535) or None
        port_node.done()
    node.done()
    return Destination(host=host, subset=subset, port=port)


# -- VirtualService ---------------------------------------------------------------------------


def _regex(value: Any) -> str:
    pattern = parse_regex(value)
    if not pattern:
        raise ValueError("regex must not be empty")
    if len(pattern) > _MAX_REGEX_LENGTH:
        raise ValueError(f"regex is too long ({len(pattern)} characters; the limit is 1024)")
    return pattern


def _string_match(
    node: Node,
    *,
    allow_present: bool = False,
    allow_empty_prefix: bool = False,
    allow_prefix: bool = True,
) -> StringMatch:
    """Istio's ``StringMatch``: exactly one of ``exact``, ``prefix``, ``regex``.

    ``allow_present`` admits ``{}`` (headers and query parameters: the key must exist).
    """
    given = [k for k in ("exact", "prefix", "regex") if node.has(k)]
    exact = node.string("exact")
    prefix = node.string("prefix")
    regex = node.value("regex", _regex, "")
    node.done()
    if len(given) > 1:
        node.error(None, f"set only one of exact, prefix or regex; got {' and '.join(given)}")
    if not given:
        if allow_present:
            return StringMatch("present")
        node.error(None, "must set one of exact, prefix or regex")
        return StringMatch("exact")
    kind = given[0]
    if kind == "prefix":
        if not allow_prefix:
            node.error(
                "prefix",
                "prefix matching is not supported for query parameters (Istio ignores it); "
                "use exact or regex",
            )
        elif not prefix and not allow_empty_prefix:
            node.error("prefix", "must not be empty")
        return StringMatch("prefix", prefix)
    if kind == "regex":
        return StringMatch("regex", regex)
    return StringMatch("exact", exact)


def _optional_string_match(node: Node, key: str, **options: bool) -> StringMatch | None:
    child = node.node(key)
    return None if child is None else _string_match(child, **options)


def _header_matches(node: Node, key: str) -> Mapping[str, StringMatch]:
    out: dict[str, StringMatch] = {}
    for name, child in node.node_map(key).items():
        lowered = _check_header_name(node, child.path, name)
        if lowered in out:
            child.error(None, f"header {lowered!r} is matched twice (names are case-insensitive)")
        out[lowered] = _string_match(child, allow_present=True)
    return _frozen(out)


def _query_matches(node: Node, key: str) -> Mapping[str, StringMatch]:
    out: dict[str, StringMatch] = {}
    for name, child in node.node_map(key).items():
        if not name:
            child.error(None, "query parameter name must not be empty")
        out[name] = _string_match(child, allow_present=True, allow_prefix=False)
    return _frozen(out)


def _match_request(node: Node) -> HTTPMatchRequest:
    name = node.string("name")
    uri = _optional_string_match(node, "uri", allow_empty_prefix=True)
    scheme = _optional_string_match(node, "scheme")
    method = _optional_string_match(node, "method")
    authority = _optional_string_match(node, "authority")
    headers = _header_matches(node, "headers")
    without_headers = _header_matches(node, "withoutHeaders")
    query_params = _query_matches(node, "queryParams")
    port = _optional_port(node, "port")
    source_labels = _labels(node, "sourceLabels")
    source_namespace = node.value("sourceNamespace", parse_namespace, "")
    ignore_uri_case = node.boolean("ignoreUriCase")
    _gateways(node, "gateways")
    node.unsupported("statPrefix", "per-route statistics prefixes are not implemented")
    node.done()
    return HTTPMatchRequest(
        name=name,
        uri=uri,
        scheme=scheme,
        method=method,
        authority=authority,
        headers=headers,
        query_params=query_params,
        without_headers=without_headers,
        port=port,
        source_labels=source_labels,
        source_namespace=source_namespace,
        ignore_uri_case=ignore_uri_case,
    )


def _header_operations(node: Node | None, *, request: bool) -> HeaderOperations:
    if node is None:
        return HeaderOperations()
    edits: dict[str, dict[str, str]] = {}
    for op in ("set", "add"):
        values = node.str_map(op)
        edits[op] = {}
        for name, value in values.items():
            path = f"{node.at(op)}.{name}"
            lowered = _check_header_name(node, path, name, operation="" if request else op)
            edits[op][lowered] = _check_header_value(node, path, value)
    removed: list[str] = []
    for path, name in _indexed_strings(node, "remove"):
        removed.append(_check_header_name(node, path, name, operation="remove"))
    node.done()
    return HeaderOperations(
        set=frozen_map(edits["set"]), add=frozen_map(edits["add"]), remove=tuple(removed)
    )


def _headers(node: Node | None) -> Headers:
    if node is None:
        return Headers()
    request = _header_operations(node.node("request"), request=True)
    response = _header_operations(node.node("response"), request=False)
    node.done()
    return Headers(request=request, response=response)


def _route_destination(node: Node) -> RouteDestination:
    destination = _destination(node.node("destination", required=True))
    weight = node.integer("weight", minimum=0, maximum=100)
    headers = _headers(node.node("headers"))
    node.done()
    return RouteDestination(destination=destination, weight=weight, headers=headers)


def _retry_on(node: Node) -> tuple[str, ...]:
    text = node.string("retryOn")
    tokens: list[str] = []
    for raw in text.split(","):
        token = raw.strip()
        if not token or token in tokens:
            continue
        if token.isdigit():
            if not 100 <= int(token) <= 599:
                node.error("retryOn", f"status code {token} is not between 100 and 599")
                continue
        elif token not in HTTP_RETRY_CONDITIONS and token not in GRPC_RETRY_CONDITIONS:
            known = ", ".join(sorted(HTTP_RETRY_CONDITIONS | GRPC_RETRY_CONDITIONS))
            node.error(
                "retryOn",
                f"{token!r} is not a valid retryOn condition; use a status code or one of {known}",
            )
            continue
        tokens.append(token)
    return tuple(tokens)


def _retries(node: Node | None) -> HTTPRetry | None:
    if node is None:
        return None
    attempts = node.integer("attempts", minimum=0)
    per_try_timeout = duration(node, "perTryTimeout")
    retry_on = _retry_on(node) if node.has("retryOn") else DEFAULT_RETRY_ON
    node.ignore("retryOn")
    backoff = duration(node, "backoff")
    node.unsupported("retryRemoteLocalities", "locality-aware retries are not implemented")
    configured = [k for k in ("perTryTimeout", "retryOn", "backoff") if node.has(k)]
    raw_attempts = node.data.get("attempts")
    disabled = raw_attempts is None or (type(raw_attempts) is int and raw_attempts == 0)
    if disabled and configured:
        node.error(
            "attempts",
            f"is 0 (retries disabled) but {', '.join(configured)} is set; "
            "set attempts to the number of retries",
        )
    node.done()
    return HTTPRetry(
        attempts=attempts, per_try_timeout=per_try_timeout, retry_on=retry_on, backoff=backoff
    )


def _fault_delay(node: Node | None) -> FaultDelay | None:
    if node is None:
        return None
    node.unsupported("exponentialDelay", "use fixedDelay")
    fixed = duration(node, "fixedDelay", required=not node.has("exponentialDelay"))
    percentage = _percent(node, "percentage")
    percent = node.integer("percent", minimum=0, maximum=100)
    if node.has("percentage") and node.has("percent"):
        node.error("percent", "set only one of percentage and percent (deprecated)")
    if percentage is None:
        percentage = float(percent)
    node.done()
    return FaultDelay(fixed_delay=fixed or 0.0, percentage=percentage)


def _fault_abort(node: Node | None) -> FaultAbort | None:
    if node is None:
        return None
    node.unsupported("grpcStatus", "meshware injects HTTP aborts only; use httpStatus")
    node.unsupported("http2Error", "meshware injects HTTP aborts only; use httpStatus")
    other = node.has("grpcStatus") or node.has("http2Error")
    status = node.integer("httpStatus", required=not other, minimum=200, maximum=599)
    percentage = _percent(node, "percentage")
    node.done()
    return FaultAbort(http_status=status, percentage=0.0 if percentage is None else percentage)


def _fault(node: Node | None) -> HTTPFaultInjection | None:
    if node is None:
        return None
    if not node.has("delay") and not node.has("abort"):
        node.error(None, "must have a delay and/or an abort")
    delay = _fault_delay(node.node("delay"))
    abort = _fault_abort(node.node("abort"))
    node.done()
    return HTTPFaultInjection(delay=delay, abort=abort)


def _rewrite(node: Node | None) -> HTTPRewrite | None:
    if node is None:
        return None
    node.unsupported("uriRegexRewrite", "regex rewrites are not implemented; use uri")
    uri = node.string("uri")
    authority = node.string("authority")
    if not uri and not authority and not node.has("uriRegexRewrite"):
        node.error(None, "must set uri and/or authority")
    node.done()
    return HTTPRewrite(uri=uri, authority=authority)


def _mirrors(node: Node) -> tuple[Destination | None, float, tuple[HTTPMirrorPolicy, ...]]:
    mirror = _destination(node.node("mirror")) if node.has("mirror") else None
    node.ignore("mirror")
    percentage = _percent(node, "mirrorPercentage")
    mirrors: list[HTTPMirrorPolicy] = []
    for child in node.nodes("mirrors"):
        destination = _destination(child.node("destination", required=True))
        share = _percent(child, "percentage")
        child.done()
        mirrors.append(HTTPMirrorPolicy(destination, 100.0 if share is None else share))
    node.unsupported("mirrorPercent", "deprecated in Istio; use mirrorPercentage: {value: N}")
    if node.has("mirror") and node.has("mirrors"):
        node.error("mirrors", "cannot be used together with mirror; list every mirror in mirrors")
    elif node.has("mirrorPercentage") and not node.has("mirror"):
        node.error(
            "mirrorPercentage",
            "applies to mirror only; set mirror, or a percentage on each entry of mirrors",
        )
    return mirror, 100.0 if percentage is None else percentage, tuple(mirrors)


def _http_route(node: Node) -> HTTPRoute:
    name = node.string("name")
    match = tuple(_match_request(child) for child in node.nodes("match"))
    routes = [_route_destination(child) for child in node.nodes("route")]
    rewrite = _rewrite(node.node("rewrite"))
    timeout = duration(node, "timeout", allow_zero=True)
    retries = _retries(node.node("retries"))
    fault = _fault(node.node("fault"))
    mirror, mirror_percentage, mirrors = _mirrors(node)
    headers = _headers(node.node("headers"))
    node.unsupported("redirect", "HTTP redirects are not implemented; redirect in the application")
    node.unsupported(
        "directResponse", "direct responses are not implemented; use fault.abort to test errors"
    )
    node.unsupported("delegate", "VirtualService delegation is not implemented; inline the routes")
    node.unsupported(
        "corsPolicy", "CORS is left to the application; use your web framework's CORS middleware"
    )
    if not routes and not any(node.has(k) for k in ("redirect", "directResponse", "delegate")):
        node.error("route", "must have at least one route (a destination to send requests to)")
    if len(routes) > 1 and sum(r.weight for r in routes) == 0:
        node.error(
            "route",
            "total destination weight = 0: give at least one destination a weight above 0",
        )
    if len(routes) == 1:
        routes[0] = replace(routes[0], weight=100)
    node.done()
    return HTTPRoute(
        name=name,
        match=match,
        route=tuple(routes),
        rewrite=rewrite,
        timeout=timeout,
        retries=retries,
        fault=fault,
        mirror=mirror,
        mirror_percentage=mirror_percentage,
        mirrors=mirrors,
        headers=headers,
    )


def parse_virtual_service(spec: Node, namespace: str) -> VirtualServiceSpec:
    hosts = _hosts(spec, "hosts", "VirtualService")
    gateways = _gateways(spec, "gateways")
    export_to = _export_to(spec, namespace)
    http = tuple(_http_route(child) for child in spec.nodes("http"))
    spec.unsupported("tcp", "meshware routes HTTP only; TCP routes are not implemented")
    spec.unsupported("tls", "meshware routes HTTP only; TLS (SNI) routes are not implemented")
    if not http and not spec.has("tcp") and not spec.has("tls"):
        spec.error("http", "a VirtualService needs at least one http route")
    spec.done()
    return VirtualServiceSpec(hosts=hosts, http=http, gateways=gateways, export_to=export_to)


# -- DestinationRule --------------------------------------------------------------------------

_SIMPLE_LB = ("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN")
_MAGLEV_MAX = 5000011


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    factor = 3
    while factor * factor <= n:
        if n % factor == 0:
            return False
        factor += 2
    return True


def _http_cookie(node: Node | None) -> HTTPCookie | None:
    if node is None:
        return None
    name = node.string("name", required=True, nonempty=True)
    path = node.string("path")
    ttl = duration(node, "ttl", allow_zero=True)
    node.unsupported("attributes", "cookie attributes are not implemented")
    node.done()
    return HTTPCookie(name=name, path=path, ttl=ttl)


def _consistent_hash(node: Node | None) -> ConsistentHashLB | None:
    if node is None:
        return None
    keys = ("httpHeaderName", "httpCookie", "httpQueryParameterName", "useSourceIp")
    given = [k for k in keys if node.has(k)]
    header = node.string("httpHeaderName")
    if node.has("httpHeaderName"):
        header = _check_header_name(node, node.at("httpHeaderName"), header)
    cookie = _http_cookie(node.node("httpCookie"))
    query = node.string("httpQueryParameterName")
    node.unsupported(
        "useSourceIp",
        "in-process clients all share their process's address; hash on httpHeaderName or "
        "httpCookie instead",
    )
    if not given:
        node.error(None, "must set one of httpHeaderName, httpCookie or httpQueryParameterName")
    elif len(given) > 1:
        node.error(None, f"set only one hash key; got {' and '.join(given)}")
    algorithm: Literal["RING_HASH", "MAGLEV"] = "RING_HASH"
    ring_size = node.integer("minimumRingSize", minimum=0)
    table_size = 65537
    ring = node.node("ringHash")
    if ring is not None:
        ring_size = ring.integer("minimumRingSize", minimum=0)
        ring.done()
    maglev = node.node("maglev")
    if maglev is not None:
        algorithm = "MAGLEV"
        table_size = maglev.integer("tableSize", required=True, minimum=1)
        if table_size and (table_size >= _MAGLEV_MAX or not _is_prime(table_size)):
            maglev.error("tableSize", f"must be a prime number below {_MAGLEV_MAX}")
        maglev.done()
    if ring is not None and maglev is not None:
        node.error("maglev", "set only one of ringHash and maglev")
    if node.has("minimumRingSize") and (ring is not None or maglev is not None):
        node.error("minimumRingSize", "set only one of minimumRingSize (deprecated) and ringHash")
    node.done()
    return ConsistentHashLB(
        http_header_name=header,
        http_cookie=cookie,
        http_query_parameter_name=query,
        algorithm=algorithm,
        minimum_ring_size=ring_size or 1024,
        maglev_table_size=table_size or 65537,
    )


def _load_balancer(node: Node | None) -> LoadBalancerSettings | None:
    if node is None:
        return None
    simple = node.enum("simple", _SIMPLE_LB, default="UNSPECIFIED")
    if simple == "PASSTHROUGH":
        node.error("simple", "PASSTHROUGH is not supported by meshware: pick an algorithm")
        simple = "UNSPECIFIED"
    elif simple == "LEAST_CONN":  # deprecated alias
        simple = "LEAST_REQUEST"
    consistent_hash = _consistent_hash(node.node("consistentHash"))
    if node.has("simple") and node.has("consistentHash"):
        node.error("consistentHash", "set only one of simple and consistentHash")
    node.unsupported("localityLbSetting", "locality-aware load balancing is not implemented")
    node.unsupported("warmupDurationSecs", "slow-start warmup is not implemented")
    node.unsupported("warmup", "slow-start warmup is not implemented")
    node.done()
    return LoadBalancerSettings(
        simple=cast(LoadBalancerAlgorithm, simple), consistent_hash=consistent_hash
    )


def _limit(node: Node, key: str, *, minimum: int = 0) -> int | None:
    """A connection-pool limit; Istio's 0 or unset means "no limit" (None)."""
    return node.integer(key, minimum=minimum) or None


def _tcp_settings(node: Node | None) -> TCPSettings:
    if node is None:
        return TCPSettings()
    max_connections = _limit(node, "maxConnections", minimum=1)
    connect_timeout = duration(node, "connectTimeout")
    max_duration = duration(node, "maxConnectionDuration")
    idle_timeout = duration(node, "idleTimeout", allow_zero=True)
    node.unsupported("tcpKeepalive", "TCP keep-alive probes are not implemented")
    node.done()
    return TCPSettings(
        max_connections=max_connections,
        connect_timeout=10.0 if connect_timeout is None else connect_timeout,
        max_connection_duration=max_duration,
        idle_timeout=3600.0 if idle_timeout is None else idle_timeout,
    )


def _http_settings(node: Node | None) -> HTTPSettings:
    if node is None:
        return HTTPSettings()
    pending = _limit(node, "http1MaxPendingRequests")
    max_requests = _limit(node, "http2MaxRequests")
    per_connection = _limit(node, "maxRequestsPerConnection")
    max_retries = _limit(node, "maxRetries")
    idle_timeout = duration(node, "idleTimeout")
    upgrade = node.enum(
        "h2UpgradePolicy", ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"), default="DEFAULT"
    )
    use_client_protocol = node.boolean("useClientProtocol")
    streams = _limit(node, "maxConcurrentStreams")
    if upgrade == "UPGRADE" and use_client_protocol:
        node.error("useClientProtocol", "must not be true when h2UpgradePolicy is UPGRADE")
    node.done()
    return HTTPSettings(
        http1_max_pending_requests=pending,
        http2_max_requests=max_requests,
        max_requests_per_connection=per_connection,
        max_retries=max_retries,
        idle_timeout=3600.0 if idle_timeout is None else idle_timeout,
        h2_upgrade_policy=cast(H2UpgradePolicy, upgrade),
        use_client_protocol=use_client_protocol,
        max_concurrent_streams=streams,
    )


def _connection_pool(node: Node | None) -> ConnectionPoolSettings | None:
    if node is None:
        return None
    if not node.has("tcp") and not node.has("http"):
        node.error(None, "must set tcp and/or http")
    tcp = _tcp_settings(node.node("tcp"))
    http = _http_settings(node.node("http"))
    node.done()
    return ConnectionPoolSettings(tcp=tcp, http=http)


def _outlier_detection(node: Node | None) -> OutlierDetection | None:
    if node is None:
        return None
    node.unsupported("consecutiveErrors", "deprecated in Istio; use consecutive5xxErrors")
    errors_5xx = node.integer("consecutive5xxErrors", minimum=0, default=5)
    gateway_errors = node.integer("consecutiveGatewayErrors", minimum=0)
    local_failures = node.integer("consecutiveLocalOriginFailures", minimum=0, default=5)
    split = node.boolean("splitExternalLocalOriginErrors")
    if node.has("consecutiveLocalOriginFailures") and local_failures > 0 and not split:
        node.error(
            "consecutiveLocalOriginFailures",
            "only applies when splitExternalLocalOriginErrors is true",
        )
    interval = duration(node, "interval")
    base_ejection_time = duration(node, "baseEjectionTime")
    max_ejection = node.integer("maxEjectionPercent", minimum=0, maximum=100, default=10)
    min_health = node.integer("minHealthPercent", minimum=0, maximum=100)
    node.done()
    return OutlierDetection(
        consecutive_5xx_errors=errors_5xx,
        consecutive_gateway_errors=gateway_errors,
        consecutive_local_origin_failures=local_failures,
        split_external_local_origin_errors=split,
        interval=10.0 if interval is None else interval,
        base_ejection_time=30.0 if base_ejection_time is None else base_ejection_time,
        max_ejection_percent=max_ejection,
        min_health_percent=min_health,
    )


def _client_tls(node: Node | None) -> ClientTLSSettings | None:
    if node is None:
        return None
    mode = node.enum("mode", ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"), default="DISABLE")
    certificate = node.string("clientCertificate")
    private_key = node.string("privateKey")
    ca_certificates = node.string("caCertificates")
    subject_alt_names = node.str_list("subjectAltNames")
    sni = node.string("sni")
    insecure = node.boolean("insecureSkipVerify")
    node.unsupported(
        "credentialName",
        "there are no Kubernetes secrets; name PEM files with clientCertificate, privateKey "
        "and caCertificates",
    )
    node.unsupported("caCrl", "certificate revocation lists are not implemented")
    if mode == "ISTIO_MUTUAL":
        for key in ("clientCertificate", "privateKey", "caCertificates"):
            if node.has(key):
                node.error(key, "must not be set with ISTIO_MUTUAL, which uses mesh certificates")
    elif mode == "MUTUAL":
        if not certificate:
            node.error("clientCertificate", "is required for MUTUAL TLS")
        if not private_key:
            node.error("privateKey", "is required for MUTUAL TLS")
    node.done()
    return ClientTLSSettings(
        mode=cast(TLSMode, mode),
        client_certificate=certificate,
        private_key=private_key,
        ca_certificates=ca_certificates,
        subject_alt_names=subject_alt_names,
        sni=sni,
        insecure_skip_verify=insecure,
    )


def _traffic_policy(node: Node | None) -> TrafficPolicy | None:
    if node is None:
        return None
    if not node.data:
        node.error(
            None, "must set at least one of loadBalancer, connectionPool, outlierDetection or tls"
        )
    load_balancer = _load_balancer(node.node("loadBalancer"))
    connection_pool = _connection_pool(node.node("connectionPool"))
    outlier_detection = _outlier_detection(node.node("outlierDetection"))
    tls = _client_tls(node.node("tls"))
    node.unsupported(
        "portLevelSettings",
        "port-level traffic policies are not implemented; set the policy for the whole host "
        "or for a subset",
    )
    node.unsupported("tunnel", "HTTP CONNECT tunnelling is not implemented")
    node.unsupported("proxyProtocol", "the PROXY protocol is not implemented")
    node.done()
    return TrafficPolicy(
        load_balancer=load_balancer,
        connection_pool=connection_pool,
        outlier_detection=outlier_detection,
        tls=tls,
    )


def _subset(node: Node) -> Subset:
    name = node.value("name", _subset_name, "", required=True)
    labels = _labels(node, "labels")
    traffic_policy = _traffic_policy(node.node("trafficPolicy"))
    node.done()
    return Subset(name=name, labels=labels, traffic_policy=traffic_policy)


def parse_destination_rule(spec: Node, namespace: str) -> DestinationRuleSpec:
    host = spec.value("host", parse_host, "", required=True)
    traffic_policy = _traffic_policy(spec.node("trafficPolicy"))
    subsets: list[Subset] = []
    for child in spec.nodes("subsets"):
        subset = _subset(child)
        if subset.name and any(s.name == subset.name for s in subsets):
            child.error("name", f"duplicate subset name {subset.name!r}")
        subsets.append(subset)
    export_to = _export_to(spec, namespace)
    selector: WorkloadSelector | None = parse_selector(spec.node("workloadSelector"))
    if selector is not None and any(e not in (".", namespace) for e in export_to):
        spec.error(
            "exportTo",
            "a DestinationRule with a workloadSelector can only be exported to its own "
            "namespace ('.')",
        )
    spec.done()
    return DestinationRuleSpec(
        host=host,
        traffic_policy=traffic_policy,
        subsets=tuple(subsets),
        export_to=export_to,
        workload_selector=selector,
    )


# -- ServiceEntry -----------------------------------------------------------------------------

_HTTP_OR_TLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TLS")


def _port_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value or len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(f"invalid port name {value!r}: must be a DNS-1123 label, e.g. 'http'")
    return value


def _protocol(value: Any) -> ServiceProtocol:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    upper = value.upper()
    if upper == "UDP":
        raise ValueError("UDP is not supported (as in Istio)")
    for known in SERVICE_PROTOCOLS:
        if upper == known:
            return known
    raise ValueError(f"unknown protocol {value!r}; use one of {', '.join(SERVICE_PROTOCOLS)}")


def _service_port(node: Node) -> ServicePort:
    number = node.integer("number", required=True, minimum=1, maximum=65535)
    name = node.value("name", _port_name, "", required=True)
    protocol: ServiceProtocol = node.value("protocol", _protocol, "")
    target_port = _optional_port(node, "targetPort")
    node.done()
    return ServicePort(number=number, name=name, protocol=protocol, target_port=target_port)


def _endpoint_ports(node: Node, key: str, known: set[str]) -> Mapping[str, int]:
    raw = node.raw(key)
    if raw is None:
        return _frozen({})
    if not isinstance(raw, Mapping):
        node.error(key, f"must be a mapping of port name to number, got {type_name(raw)}")
        return _frozen({})
    out: dict[str, int] = {}
    for name, number in raw.items():
        path = f"{node.at(key)}.{name}"
        if not isinstance(name, str) or name not in known:
            node.problems.add(path, f"port {name!r} is not defined in the ServiceEntry's ports")
        elif isinstance(number, bool) or not isinstance(number, int):
            node.problems.add(path, f"must be a port number, got {type_name(number)} {number!r}")
        elif not 1 <= number <= 65535:
            node.problems.add(path, f"must be between 1 and 65535, got {number}")
        else:
            out[name] = number
    return _frozen(out)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _endpoint(node: Node, resolution: str, port_names: set[str]) -> WorkloadEntry:
    address = node.string("address", required=True, nonempty=True)
    path = node.at("address")
    if address.startswith("unix://"):
        node.problems.add(path, "unix domain socket endpoints are not supported by meshware")
    elif address and resolution == "STATIC" and not _is_ip(address):
        node.problems.add(path, f"{address!r} is not an IP address, which STATIC resolution needs")
    elif address and resolution != "STATIC" and not _is_ip(address):
        try:
            parse_host(address)
        except ValueError:
            node.problems.add(path, f"{address!r} is neither an IP address nor a DNS name")
    ports = _endpoint_ports(node, "ports", port_names)
    labels = _labels(node, "labels")
    weight = node.integer("weight", minimum=0)
    service_account = node.string("serviceAccount")
    node.unsupported("network", "multi-network meshes are not implemented")
    node.unsupported("locality", "locality-aware load balancing is not implemented")
    node.done()
    return WorkloadEntry(
        address=address,
        ports=ports,
        labels=labels,
        weight=weight or 1,
        service_account=service_account,
    )


def parse_service_entry(spec: Node, namespace: str) -> ServiceEntrySpec:
    hosts = _hosts(spec, "hosts", "ServiceEntry")
    addresses: list[str] = []
    for path, address in _indexed_strings(spec, "addresses"):
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            spec.problems.add(path, f"invalid address {address!r}: use an IP address or a CIDR")
            continue
        addresses.append(address)
    ports: list[ServicePort] = []
    for child in spec.nodes("ports"):
        port = _service_port(child)
        if port.number and any(p.number == port.number for p in ports):
            child.error("number", f"port {port.number} is defined twice")
        if port.name and any(p.name == port.name for p in ports):
            child.error("name", f"port name {port.name!r} is defined twice")
        ports.append(port)
    location = spec.enum("location", ("MESH_EXTERNAL", "MESH_INTERNAL"), default="MESH_EXTERNAL")
    resolution = spec.enum(
        "resolution", ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"), default="NONE"
    )
    port_names = {p.name for p in ports}
    endpoint_nodes = spec.nodes("endpoints")
    endpoints = tuple(_endpoint(child, resolution, port_names) for child in endpoint_nodes)
    export_to = _export_to(spec, namespace, allow_none=True)
    subject_alt_names = spec.str_list("subjectAltNames")
    spec.unsupported(
        "workloadSelector",
        "meshware instances register themselves; list fixed addresses under endpoints",
    )

    if any("/" in a for a in addresses) and resolution not in ("NONE", "STATIC"):
        spec.error("addresses", "CIDR addresses are allowed only with NONE or STATIC resolution")
    if resolution == "NONE" and endpoints:
        spec.error("endpoints", "must be empty with resolution NONE (the host itself is used)")
    if resolution == "STATIC" and not endpoint_nodes and not spec.has("workloadSelector"):
        spec.error("endpoints", "STATIC resolution needs endpoints with IP addresses")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for path, host in _indexed_strings(spec, "hosts"):
            if host.startswith("*"):
                spec.problems.add(
                    path, f"a wildcard host cannot be resolved with {resolution}; add endpoints"
                )
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        spec.error("endpoints", "DNS_ROUND_ROBIN allows at most one endpoint")
    if resolution != "NONE" and len(hosts) > 1:
        for i, port in enumerate(ports):
            if port.protocol not in _HTTP_OR_TLS:
                spec.error(
                    f"ports[{i}].protocol",
                    "several hosts can share only HTTP or TLS ports (the host tells them apart)",
                )
                break
    spec.done()
    return ServiceEntrySpec(
        hosts=hosts,
        addresses=tuple(addresses),
        ports=tuple(ports),
        location=cast(Location, location),
        resolution=cast(Resolution, resolution),
        endpoints=endpoints,
        export_to=export_to,
        subject_alt_names=subject_alt_names,
    )


KINDS: tuple[KindSpec, ...] = (
    KindSpec(VirtualService, NETWORKING_VERSIONS, parse_virtual_service),
    KindSpec(DestinationRule, NETWORKING_VERSIONS, parse_destination_rule),
    KindSpec(ServiceEntry, NETWORKING_VERSIONS, parse_service_entry),
)
