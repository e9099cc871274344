"""Parser for ``ServiceEntry``: hosts outside the registry and their static endpoints."""

import ipaddress
from collections.abc import Mapping
from typing import Any, cast

from meshware.config.model.networking import (
    SERVICE_PROTOCOLS,
    Location,
    Resolution,
    ServiceEntrySpec,
    ServicePort,
    ServiceProtocol,
    WorkloadEntry,
)
from meshware.config.parse.networking.fields import (
    DNS_LABEL,
    frozen,
    indexed_strings,
    optional_port,
    read_export_to,
    read_hosts,
    read_labels,
)
from meshware.config.parse.reader import Node, type_name
from meshware.config.parse.values import parse_host

_HTTP_OR_TLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TLS")


def _port_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value or len(value) > 63 or not DNS_LABEL.match(value):
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
    target_port = optional_port(node, "targetPort")
    node.done()
    return ServicePort(number=number, name=name, protocol=protocol, target_port=target_port)


def _endpoint_ports(node: Node, key: str, known: set[str]) -> Mapping[str, int]:
    raw = node.raw(key)
    if raw is None:
        return frozen({})
    if not isinstance(raw, Mapping):
        node.error(key, f"must be a mapping of port name to number, got {type_name(raw)}")
        return frozen({})
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
    return frozen(out)


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
    labels = read_labels(node, "labels")
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
    hosts = read_hosts(spec, "hosts", "ServiceEntry")
    addresses: list[str] = []
    for path, address in indexed_strings(spec, "addresses"):
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
    export_to = read_export_to(spec, namespace, allow_none=True)
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
        for path, host in indexed_strings(spec, "hosts"):
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
