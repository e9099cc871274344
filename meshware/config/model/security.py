"""``security.istio.io`` resources: PeerAuthentication and AuthorizationPolicy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from meshware.config.model.common import Resource, WorkloadSelector

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
MTLS_MODES: tuple[MtlsMode, ...] = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


@dataclass(frozen=True, slots=True)
class PeerAuthenticationSpec:
    """Which inbound connections a workload accepts: plaintext, mutual TLS or both."""

    selector: WorkloadSelector | None = None
    mode: MtlsMode = "UNSET"
    port_modes: Mapping[int, MtlsMode] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerAuthentication(Resource[PeerAuthenticationSpec]):
    KIND: ClassVar[str] = "PeerAuthentication"
    GROUP: ClassVar[str] = "security.istio.io"
