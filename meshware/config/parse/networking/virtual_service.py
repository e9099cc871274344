"""Parser for ``VirtualService``: hosts, HTTP routes, matches, retries, faults, mirrors."""

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from meshware.config.model.common import StringMatch, frozen_map
from meshware.config.model.networking import (
    DEFAULT_RETRY_ON,
    GRPC_RETRY_CONDITIONS,
    HTTP_RETRY_CONDITIONS,
    Destination,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    RouteDestination,
    VirtualServiceSpec,
)
from meshware.config.parse.networking.fields import (
    MAX_REGEX_LENGTH,
    check_header_name,
    check_header_value,
    frozen,
    indexed_strings,
    optional_port,
    read_destination,
    read_export_to,
    read_gateways,
    read_hosts,
    read_labels,
    read_percent,
)
from meshware.config.parse.reader import Node
from meshware.config.parse.values import duration, parse_namespace, parse_regex


def _regex(value: Any) -> str:
    pattern = parse_regex(value)
    if not pattern:
        raise ValueError("regex must not be empty")
    if len(pattern) > MAX_REGEX_LENGTH:
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
        lowered = check_header_name(node, child.path, name)
        if lowered in out:
            child.error(None, f"header {lowered!r} is matched twice (names are case-insensitive)")
        out[lowered] = _string_match(child, allow_present=True)
    return frozen(out)


def _query_matches(node: Node, key: str) -> Mapping[str, StringMatch]:
    out: dict[str, StringMatch] = {}
    for name, child in node.node_map(key).items():
        if not name:
            child.error(None, "query parameter name must not be empty")
        out[name] = _string_match(child, allow_present=True, allow_prefix=False)
    return frozen(out)


def _match_request(node: Node) -> HTTPMatchRequest:
    name = node.string("name")
    uri = _optional_string_match(node, "uri", allow_empty_prefix=True)
    scheme = _optional_string_match(node, "scheme")
    method = _optional_string_match(node, "method")
    authority = _optional_string_match(node, "authority")
    headers = _header_matches(node, "headers")
    without_headers = _header_matches(node, "withoutHeaders")
    query_params = _query_matches(node, "queryParams")
    port = optional_port(node, "port")
    source_labels = read_labels(node, "sourceLabels")
    source_namespace = node.value("sourceNamespace", parse_namespace, "")
    ignore_uri_case = node.boolean("ignoreUriCase")
    read_gateways(node, "gateways")
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
            lowered = check_header_name(node, path, name, operation="" if request else op)
            edits[op][lowered] = check_header_value(node, path, value)
    removed: list[str] = []
    for path, name in indexed_strings(node, "remove"):
        removed.append(check_header_name(node, path, name, operation="remove"))
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
    destination = read_destination(node.node("destination", required=True))
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
    percentage = read_percent(node, "percentage")
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
    percentage = read_percent(node, "percentage")
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
    mirror = read_destination(node.node("mirror")) if node.has("mirror") else None
    node.ignore("mirror")
    percentage = read_percent(node, "mirrorPercentage")
    mirrors: list[HTTPMirrorPolicy] = []
    for child in node.nodes("mirrors"):
        destination = read_destination(child.node("destination", required=True))
        share = read_percent(child, "percentage")
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
    hosts = read_hosts(spec, "hosts", "VirtualService")
    gateways = read_gateways(spec, "gateways")
    export_to = read_export_to(spec, namespace)
    http = tuple(_http_route(child) for child in spec.nodes("http"))
    spec.unsupported("tcp", "meshware routes HTTP only; TCP routes are not implemented")
    spec.unsupported("tls", "meshware routes HTTP only; TLS (SNI) routes are not implemented")
    if not http and not spec.has("tcp") and not spec.has("tls"):
        spec.error("http", "a VirtualService needs at least one http route")
    spec.done()
    return VirtualServiceSpec(hosts=hosts, http=http, gateways=gateways, export_to=export_to)
