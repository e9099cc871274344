"""Parsers for ``security.istio.io`` resources."""

from __future__ import annotations

from types import MappingProxyType

from meshware.config.model.common import WorkloadSelector, frozen_map
from meshware.config.model.security import (
    MTLS_MODES,
    MtlsMode,
    PeerAuthentication,
    PeerAuthenticationSpec,
)
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.reader import Node

SECURITY_VERSIONS = ("v1", "v1beta1")


def parse_selector(node: Node | None) -> WorkloadSelector | None:
    """``selector: {matchLabels: {...}}``; None when absent (namespace- or mesh-wide)."""
    if node is None:
        return None
    labels = node.str_map("matchLabels")
    node.done()
    return WorkloadSelector(frozen_map(labels))


def _mtls_mode(node: Node | None) -> MtlsMode:
    if node is None:
        return "UNSET"
    mode = node.enum("mode", MTLS_MODES, default="UNSET")
    node.done()
    return mode  # type: ignore[return-value]


def parse_peer_authentication(spec: Node, namespace: str) -> PeerAuthenticationSpec:
    selector = parse_selector(spec.node("selector"))
    mode = _mtls_mode(spec.node("mtls"))
    port_modes: dict[int, MtlsMode] = {}
    for key, child in spec.node_map("portLevelMtls").items():
        if not key.isdigit() or not 0 < int(key) < 65536:
            child.error(None, "port must be a number between 1 and 65535")
            continue
        if selector is None:
            child.error(None, "portLevelMtls requires a workload selector (as in Istio)")
        port_modes[int(key)] = _mtls_mode(child)
    spec.done()
    return PeerAuthenticationSpec(selector=selector, mode=mode, port_modes=MappingProxyType(port_modes))


KINDS: tuple[KindSpec, ...] = (
    KindSpec(PeerAuthentication, SECURITY_VERSIONS, parse_peer_authentication, spec_required=False),
)
