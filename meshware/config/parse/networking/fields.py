"""Field readers shared by the ``networking.istio.io`` parsers (hosts, headers, ports, ...)."""

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from meshware.config.model.common import frozen_map
from meshware.config.model.networking import (
    Destination,
)
from meshware.config.parse.reader import Node, type_name
from meshware.config.parse.values import parse_host, parse_namespace

K = TypeVar("K")
V = TypeVar("V")

MESH_GATEWAY = "mesh"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
ENVOY_VARIABLE = re.compile(r"%[A-Z_][A-Z0-9_]*(\([^)]*\))?(:\d+)?%")
MAX_REGEX_LENGTH = 1024


def frozen(values: Mapping[K, V]) -> Mapping[K, V]:
    return MappingProxyType(dict(values))


def indexed_strings(
    node: Node, key: str, *, required: bool = False, nonempty: bool = False
) -> list[tuple[str, str]]:
    """The strings of a list field with each one's path (``hosts[2]``) for messages."""
    node.str_list(key, required=required, nonempty=nonempty)  # records type problems
    raw = node.data.get(key)
    if not isinstance(raw, list):
        return []
    return [(f"{node.at(key)}[{i}]", item) for i, item in enumerate(raw) if isinstance(item, str)]


def read_hosts(node: Node, key: str, kind: str) -> tuple[str, ...]:
    """``hosts`` of a VirtualService or ServiceEntry: required, valid, no ``*``, no repeats."""
    out: list[str] = []
    for path, raw in indexed_strings(node, key, required=True, nonempty=True):
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


def read_export_to(node: Node, namespace: str, *, allow_none: bool = False) -> tuple[str, ...]:
    """``exportTo``: ``.``, ``*``, namespace names (and ``~`` for ServiceEntry)."""
    entries = indexed_strings(node, "exportTo")
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


def read_gateways(node: Node, key: str) -> tuple[str, ...]:
    """``gateways``: meshware has only the implicit ``mesh`` gateway."""
    gateways = node.str_list(key)
    if any(g != MESH_GATEWAY for g in gateways):
        node.error(
            key,
            "is not supported by meshware: there are no ingress/egress gateways; "
            "omit gateways or use [mesh]",
        )
    return tuple(gateways)


def read_labels(node: Node, key: str) -> Mapping[str, str]:
    """A Kubernetes label map (``sourceLabels``, subset ``labels``), keys and values checked."""
    labels = node.str_map(key)
    for name, value in labels.items():
        path = f"{node.at(key)}.{name}"
        prefix, slash, base = name.rpartition("/")
        prefix_ok = not slash or (
            0 < len(prefix) <= 253 and DNS_SUBDOMAIN.match(prefix) is not None
        )
        if not prefix_ok or not base or len(base) > 63 or not LABEL_PART.match(base):
            node.problems.add(path, f"invalid label name {name!r}")
        elif value and (len(value) > 63 or not LABEL_PART.match(value)):
            node.problems.add(
                path,
                f"invalid label value {value!r}: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit",
            )
    return frozen_map(labels)


def check_header_name(node: Node, path: str, name: str, *, operation: str = "") -> str:
    """Validate an HTTP header name and return it lower-cased."""
    if not name:
        node.problems.add(path, "header name must not be empty")
    elif name.startswith(":"):
        hint = "use rewrite.authority" if operation else "use the uri/method/scheme/authority match"
        node.problems.add(path, f"pseudo-header {name!r} cannot be used here; {hint}")
    elif not HEADER_NAME.match(name):
        node.problems.add(path, f"invalid header name {name!r}")
    elif operation and name.lower() == "host":
        node.problems.add(path, f"cannot {operation} the Host header; use rewrite.authority")
    return name.lower()


def check_header_value(node: Node, path: str, value: str) -> str:
    """A header value to send: no control characters, no Envoy ``%VARIABLE%`` substitutions."""
    if HEADER_VALUE_BAD.search(value):
        node.problems.add(path, "header value must not contain control characters")
        return value
    if ENVOY_VARIABLE.search(value.replace("%%", "")):
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


def read_percent(node: Node, key: str) -> float | None:
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


def optional_port(node: Node, key: str) -> int | None:
    if not node.has(key):
        node.raw(key)
        return None
    port = node.integer(key, minimum=1, maximum=65535)
    return port or None


def subset_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value:
        raise ValueError("subset name must not be empty")
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(
            f"invalid subset name {value!r}: use lower-case letters, digits and '-', starting "
            "and ending with a letter or digit (a DNS-1123 label)"
        )
    return value


def read_destination(node: Node | None) -> Destination:
    """``destination``/``mirror``: ``{host, subset, port: {number}}``."""
    if node is None:
        return Destination("")
    host = node.value("host", parse_host, "", required=True)
    if host == "*" or host.startswith("*."):
        node.error("host", f"must name one service, not a wildcard ({host!r})")
    subset = node.value("subset", subset_name, "")
    port: int | None = None
    port_node = node.node("port")
    if port_node is not None:
        port = port_node.integer("number", required=True, minimum=1, maximum=65535) or None
        port_node.done()
    node.done()
    return Destination(host=host, subset=subset, port=port)
