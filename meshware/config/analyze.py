"""Whole-mesh validation, like ``istioctl analyze``: checks that span resources."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from meshware.config.model.common import Resource
from meshware.config.parse.document import Document
from meshware.errors import Problem


def analyze(
    resources: Sequence[Resource[Any]],
    origin: Callable[[Resource[Any]], Document | None],
) -> list[Problem]:
    """Every cross-resource problem in ``resources``; ``origin`` locates each resource's document."""
    problems: list[Problem] = []
    seen: dict[Any, Resource[Any]] = {}
    for resource in resources:
        first = seen.get(resource.key)
        doc = origin(resource)
        if first is not None:
            first_doc = origin(first)
            where = f"{first_doc.source} (document {first_doc.index})" if first_doc else "elsewhere"
            problems.append(
                Problem(
                    f"duplicate resource: {resource.ref} is also defined in {where}",
                    path="metadata.name",
                    resource=resource.ref,
                    source=doc.source if doc else "",
                    document=doc.index if doc else 0,
                )
            )
        else:
            seen[resource.key] = resource
    return problems
