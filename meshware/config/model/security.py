"""``security.istio.io`` resources: PeerAuthentication and AuthorizationPolicy.

AuthorizationPolicy keeps Istio's semantics exactly, including the ones that surprise people:

- An ``ALLOW`` policy with no rules (``spec: {}``) selects workloads and matches nothing, so
  it denies every request to them (Istio's "allow-nothing"). ``rules=()`` therefore means
  "deny all" for ALLOW, which is different from there being no policy at all.
- A rule with no sources, operations and conditions (``rules: [{}]``) matches every request.
- Inside a rule, ``from``, ``to`` and ``when`` are ANDed; the entries of each list are ORed;
  the fields of one source or operation are ANDed; the values of one field are ORed.
"""

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


# -- AuthorizationPolicy ------------------------------------------------------------------

AuthorizationAction = Literal["ALLOW", "DENY", "AUDIT"]
AUTHORIZATION_ACTIONS: tuple[AuthorizationAction, ...] = ("ALLOW", "DENY", "AUDIT")

ValueMatchKind = Literal["exact", "prefix", "suffix", "present"]


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """One Istio authorization value: exact ``v``, prefix ``v*``, suffix ``*v`` or ``*``.

    ``*`` alone (``present``) matches any non-empty value.
    """

    kind: ValueMatchKind
    value: str = ""

    def matches(self, candidate: str) -> bool:
        if self.kind == "exact":
            return candidate == self.value
        if self.kind == "prefix":
            return candidate.startswith(self.value)
        if self.kind == "suffix":
            return candidate.endswith(self.value)
        return candidate != ""

    def __str__(self) -> str:
        """The value as written in Istio YAML (``/admin*``, ``*.png``, ``*``)."""
        if self.kind == "prefix":
            return f"{self.value}*"
        if self.kind == "suffix":
            return f"*{self.value}"
        if self.kind == "present":
            return "*"
        return self.value


@dataclass(frozen=True, slots=True)
class Source:
    """``from[].source``: the caller's mTLS identity; every set field must match."""

    principals: tuple[ValueMatch, ...] = ()
    """SPIFFE identities without ``spiffe://``, e.g. ``cluster.local/ns/default/sa/productpage``."""
    not_principals: tuple[ValueMatch, ...] = ()
    namespaces: tuple[ValueMatch, ...] = ()
    not_namespaces: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """``to[].operation``: what the request does; every set field must match."""

    hosts: tuple[ValueMatch, ...] = ()
    """Compared case-insensitively with the Host header; stored lower-case."""
    not_hosts: tuple[ValueMatch, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[ValueMatch, ...] = ()
    not_methods: tuple[ValueMatch, ...] = ()
    paths: tuple[ValueMatch, ...] = ()
    not_paths: tuple[ValueMatch, ...] = ()


ConditionKey = Literal[
    "request.headers", "source.principal", "source.namespace", "destination.port"
]


@dataclass(frozen=True, slots=True)
class Condition:
    """``when[]``: an attribute of the request that must (``values``) or must not match.

    For ``request.headers[NAME]`` the key is ``request.headers`` and ``header`` holds the
    lower-cased NAME. For ``destination.port`` every value is an exact decimal port.
    """

    key: ConditionKey
    header: str = ""
    values: tuple[ValueMatch, ...] = ()
    not_values: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: matches when any source, any operation and every condition match.

    ``sources`` is Istio's ``from``, ``operations`` its ``to``, ``conditions`` its ``when``;
    an empty tuple places no constraint.
    """

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationPolicySpec:
    """Access control for the selected workloads; see the module docstring for semantics."""

    selector: WorkloadSelector | None = None
    action: AuthorizationAction = "ALLOW"
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy(Resource[AuthorizationPolicySpec]):
    KIND: ClassVar[str] = "AuthorizationPolicy"
    GROUP: ClassVar[str] = "security.istio.io"
