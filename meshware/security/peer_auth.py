"""The inbound mutual TLS mode of a workload, from Istio's ``PeerAuthentication`` resources.

Which policies count (Istio's ``ComposePeerAuthentication``), one per level:

- **workload**: in the workload's namespace, with a ``selector`` whose ``matchLabels`` are
  among the workload's labels (a selector in the root namespace selects nothing: Istio
  ignores it);
- **namespace**: in the workload's namespace, without a selector (or with empty
  ``matchLabels``);
- **mesh**: in the root namespace ``istio-system``, without a selector.

When several policies compete for one level the oldest wins in Istio. meshware's config store
keeps no creation times (``metadata.creationTimestamp`` is dropped on apply), so ties go to the
first by name, which is also Istio's order for policies created in the same second.

How the levels combine: the workload level's ``mtls.mode`` wins over the namespace level's,
which wins over the mesh level's; ``UNSET`` (or no ``mtls``) inherits from the level above.
Then ``portLevelMtls`` of the workload-level policy, for the port the workload serves on,
overrides the result (its own ``UNSET`` inherits the workload's mode). When nothing sets a
mode the default is Istio's ``PERMISSIVE`` for a workload with credentials and ``DISABLE``
for one without: it cannot do TLS at all.

A mode that needs credentials on a workload that has none: ``PERMISSIVE`` serves plaintext
(the only half it can), ``STRICT`` **fails closed**: every inbound connection is refused and
an error is logged, as Istio would refuse plaintext to a STRICT workload whose proxy has no
certificate yet. An explicit override (``meshware serve --mtls``, ``MESHWARE_MTLS``) beats every
policy; settings validation already refuses STRICT and PERMISSIVE overrides without
credentials.

Everything here is pure: the mesh recompiles the mode on every config change and the server
reads the result once per accepted connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.security import MtlsMode, PeerAuthentication
from meshware.security.selection import ROOT_NAMESPACE, is_workload_specific, selects

__all__ = [
    "EFFECTIVE_MODES",
    "EffectiveMode",
    "InboundMode",
    "MergedPeerAuthentication",
    "inbound_mode",
    "merge_peer_authentication",
    "resolve",
]

EffectiveMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
EFFECTIVE_MODES: Final[tuple[EffectiveMode, ...]] = ("STRICT", "PERMISSIVE", "DISABLE")

_NO_PORTS: Final[Mapping[int, MtlsMode]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MergedPeerAuthentication:
    """The PeerAuthentication levels that apply to one workload, merged."""

    mode: MtlsMode = "UNSET"
    """The workload-wide mode; ``UNSET`` when no level sets one."""
    port_modes: Mapping[int, MtlsMode] = field(default_factory=lambda: _NO_PORTS)
    """``portLevelMtls`` of the workload-level policy, ``UNSET`` already inherited."""
    mode_source: str = ""
    """``namespace/name`` of the policy that set :attr:`mode` (``""`` when none did)."""
    port_source: str = ""
    """``namespace/name`` of the workload-level policy with ``portLevelMtls``, if any."""

    def mode_for(self, port: int | None) -> MtlsMode:
        """The mode on ``port`` (the workload-wide one when the port is unknown or unlisted)."""
        if port is None:
            return self.mode
        return self.port_modes.get(port, self.mode)

    def source_for(self, port: int | None) -> str:
        """Which policy decided the mode on ``port``, for logs (``""`` when none did)."""
        if port is not None and port in self.port_modes:
            return self.port_source
        return self.mode_source


def _ref(policy: PeerAuthentication) -> str:
    return f"{policy.metadata.namespace}/{policy.metadata.name}"


def merge_peer_authentication(
    config: MeshConfig, *, namespace: str, labels: Mapping[str, str]
) -> MergedPeerAuthentication:
    """The PeerAuthentication of the workload ``namespace``/``labels`` (see the module doc)."""
    mesh: PeerAuthentication | None = None
    namespace_wide: PeerAuthentication | None = None
    workload: PeerAuthentication | None = None
    # config.of() is sorted by (namespace, name): the first found per level is the winner.
    for policy in config.of(PeerAuthentication):
        ns = policy.metadata.namespace
        selector = policy.spec.selector
        if ns not in (namespace, ROOT_NAMESPACE):
            continue
        if not is_workload_specific(selector):
            if ns == ROOT_NAMESPACE:
                mesh = mesh or policy
            else:
                namespace_wide = namespace_wide or policy
        elif ns != ROOT_NAMESPACE and selects(selector, labels):
            workload = workload or policy

    mode: MtlsMode = "UNSET"
    mode_source = ""
    for level in (mesh, namespace_wide, workload):
        if level is not None and level.spec.mode != "UNSET":
            mode, mode_source = level.spec.mode, _ref(level)
    if workload is None or not workload.spec.port_modes:
        return MergedPeerAuthentication(mode, _NO_PORTS, mode_source)
    inherited = {
        port: (mode if port_mode == "UNSET" else port_mode)
        for port, port_mode in workload.spec.port_modes.items()
    }
    return MergedPeerAuthentication(
        mode, MappingProxyType(inherited), mode_source, port_source=_ref(workload)
    )


@dataclass(frozen=True, slots=True)
class InboundMode:
    """What the workload's server does with new connections, and why."""

    mode: EffectiveMode
    """``STRICT``: mutual TLS only; ``PERMISSIVE``: mutual TLS and plaintext on one port;
    ``DISABLE``: plaintext only."""
    credentials: bool
    """The workload has credentials, so it can serve TLS at all."""
    reason: str
    """For logs: ``PeerAuthentication default/strict``, ``override``, ``default``."""

    @property
    def accepts_mtls(self) -> bool:
        """True when a mutual TLS client is served (what the registry advertises)."""
        return self.credentials and self.mode != "DISABLE"

    @property
    def accepts_plaintext(self) -> bool:
        return self.mode != "STRICT"

    @property
    def refuses_everything(self) -> bool:
        """STRICT without credentials: fail closed."""
        return self.mode == "STRICT" and not self.credentials

    def __str__(self) -> str:
        text = f"{self.mode} ({self.reason})"
        if self.refuses_everything:
            return f"{text}: no workload credentials, every inbound connection is refused"
        return text


def resolve(
    merged: MergedPeerAuthentication,
    *,
    port: int | None,
    credentials: bool,
    override: str = "",
) -> InboundMode:
    """The effective mode on ``port`` from the merged policies, the credentials the workload
    has and an explicit ``override`` (``STRICT``, ``PERMISSIVE``, ``DISABLE`` or ``""``)."""
    if override:
        if override not in EFFECTIVE_MODES:
            raise ValueError(f"mtls override must be one of {EFFECTIVE_MODES}, got {override!r}")
        return InboundMode(override, credentials, "override")
    configured = merged.mode_for(port)
    if configured == "UNSET":
        default: EffectiveMode = "PERMISSIVE" if credentials else "DISABLE"
        return InboundMode(default, credentials, "default: no PeerAuthentication sets a mode")
    reason = f"PeerAuthentication {merged.source_for(port)}"
    if port is not None and port in merged.port_modes:
        reason += f" port {port}"
    if configured == "PERMISSIVE" and not credentials:
        return InboundMode("DISABLE", credentials, f"{reason} is PERMISSIVE, no credentials")
    return InboundMode(configured, credentials, reason)


def inbound_mode(
    config: MeshConfig,
    *,
    namespace: str,
    labels: Mapping[str, str],
    port: int | None,
    credentials: bool,
    override: str = "",
) -> InboundMode:
    """:func:`merge_peer_authentication` then :func:`resolve`, in one call."""
    merged = merge_peer_authentication(config, namespace=namespace, labels=labels)
    return resolve(merged, port=port, credentials=credentials, override=override)
