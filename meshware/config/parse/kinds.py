"""The registry entry type that ties a resource kind to its API versions and spec parser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshware.config.model.common import Resource
from meshware.config.parse.reader import Node


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How to parse one kind: ``group/version`` pairs it accepts and its ``spec`` parser.

    ``parse_spec`` receives the ``spec`` node (path ``spec``) and the resource's namespace, and
    returns the typed spec; it records problems on the node instead of raising.
    """

    resource: type[Resource[Any]]
    versions: tuple[str, ...]
    parse_spec: Callable[[Node, str], Any]
    spec_required: bool = True

    @property
    def kind(self) -> str:
        return self.resource.KIND

    @property
    def group(self) -> str:
        return self.resource.GROUP

    @property
    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" for v in self.versions)
