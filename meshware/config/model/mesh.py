"""The whole-mesh configuration: every validated resource of one config version."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from meshware.config.model.common import Resource, ResourceKey

R = TypeVar("R", bound=Resource[Any])


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """An immutable set of resources, sorted by (kind, namespace, name)."""

    resources: tuple[Resource[Any], ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.resources, key=lambda r: r.key))
        object.__setattr__(self, "resources", ordered)

    def __iter__(self) -> Iterator[Resource[Any]]:
        return iter(self.resources)

    def __len__(self) -> int:
        return len(self.resources)

    def of(self, cls: type[R]) -> tuple[R, ...]:
        """Every resource of one kind, e.g. ``config.of(VirtualService)``."""
        return tuple(r for r in self.resources if isinstance(r, cls))

    def get(self, key: ResourceKey) -> Resource[Any] | None:
        for resource in self.resources:
            if resource.key == key:
                return resource
        return None
