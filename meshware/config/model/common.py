"""Types shared by every resource: object metadata, the resource envelope, string matches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Generic, Literal, NamedTuple, TypeVar

DEFAULT_NAMESPACE = "default"
CLUSTER_DOMAIN = "svc.cluster.local"

SpecT = TypeVar("SpecT")

EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def frozen_map(values: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only copy of ``values`` (for labels, headers and other string maps)."""
    return MappingProxyType(dict(values)) if values else EMPTY_MAP


def canonical_host(host: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Istio's short-name rule: ``reviews`` in namespace ``ns`` is ``reviews.ns.svc.cluster.local``.

    Names with a dot (``reviews.prod``, ``api.example.com``) are kept, except that a
    ``name.namespace`` pair is completed with the cluster domain as Kubernetes DNS does.
    """
    host = host.lower().rstrip(".")
    if host == "*" or host.startswith("*."):
        return host
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
    if len(parts) == 2 and parts[1] != "local":
        return f"{host}.{CLUSTER_DOMAIN}"
    return host


class ResourceKey(NamedTuple):
    """Identity of a resource within a mesh: no two resources share one."""

    kind: str
    namespace: str
    name: str

    @property
    def ref(self) -> str:
        """``Kind/name``, or ``Kind/namespace/name`` outside the default namespace."""
        if self.namespace == DEFAULT_NAMESPACE:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """The part of Kubernetes ``metadata`` that meshware reads."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    annotations: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)


@dataclass(frozen=True, slots=True)
class Resource(Generic[SpecT]):
    """A validated configuration resource: an envelope around a kind-specific ``spec``."""

    KIND: ClassVar[str] = ""
    GROUP: ClassVar[str] = ""

    api_version: str
    metadata: ObjectMeta
    spec: SpecT

    @property
    def kind(self) -> str:
        return type(self).KIND

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.KIND, self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        return self.key.ref


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's ``StringMatch``: exact, prefix or (RE2, full-match) regex; or mere presence.

    ``present`` is Istio's empty match ``{}`` in ``headers``/``queryParams``/``withoutHeaders``:
    the key must exist, whatever its value.
    """

    kind: Literal["exact", "prefix", "regex", "present"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class WorkloadSelector:
    """``selector``/``workloadSelector``: labels an instance must carry; empty selects all."""

    match_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
