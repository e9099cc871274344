"""Document → typed resource: the envelope (apiVersion, kind, metadata) and kind dispatch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshware.config.model.common import DEFAULT_NAMESPACE, ObjectMeta, Resource, frozen_map
from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import networking, rollout, security, telemetry
from meshware.config.parse.document import Document
from meshware.config.parse.kinds import KindSpec
from meshware.config.parse.reader import Node, Problems
from meshware.config.parse.values import parse_namespace, parse_resource_name
from meshware.errors import ConfigError, Problem

KINDS: dict[str, KindSpec] = {
    spec.kind: spec
    for spec in (*networking.KINDS, *security.KINDS, *telemetry.KINDS, *rollout.KINDS)
}

# Kubernetes bookkeeping that `kubectl get -o yaml` adds; accepted and not acted upon.
_METADATA_BOOKKEEPING = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
)


def _resource_label(body: Any) -> str:
    """``Kind/name`` for messages, from whatever the document has (before validation)."""
    if not isinstance(body, dict):
        return ""
    kind = body.get("kind")
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    kind_text = kind if isinstance(kind, str) and kind else "<no kind>"
    name_text = name if isinstance(name, str) and name else "<no name>"
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    if isinstance(namespace, str) and namespace and namespace != DEFAULT_NAMESPACE:
        return f"{kind_text}/{namespace}/{name_text}"
    return f"{kind_text}/{name_text}"


def parse_document(document: Document) -> Resource[Any]:
    """Validate one document into its typed resource; raises :class:`ConfigError`."""
    problems = Problems(document.source, document.index, _resource_label(document.body))
    resource = _parse(document, problems)
    if problems or resource is None:
        raise ConfigError(problems.items or [Problem("invalid resource", source=document.source)])
    return resource


def _parse(document: Document, problems: Problems) -> Resource[Any] | None:
    top = Node.root(document.body, "", problems)
    api_version = top.string("apiVersion", required=True)
    kind = top.string("kind", required=True)
    spec_kind = KINDS.get(kind)
    if kind and spec_kind is None:
        known = ", ".join(sorted(KINDS))
        top.error("kind", f"unknown kind {kind!r}; meshware understands {known}")
    if spec_kind is not None and api_version and api_version not in spec_kind.api_versions:
        top.error(
            "apiVersion",
            f"{kind} is not served as {api_version!r}; use one of {', '.join(spec_kind.api_versions)}",
        )
        spec_kind = None

    metadata = _parse_metadata(top.node("metadata", required=True))
    spec_node = top.node("spec", required=spec_kind is not None and spec_kind.spec_required)
    top.ignore("status")
    top.done()

    if spec_kind is None or metadata is None:
        return None
    spec = spec_kind.parse_spec(spec_node or Node({}, "spec", problems), metadata.namespace)
    if problems:
        return None
    return spec_kind.resource(api_version=api_version, metadata=metadata, spec=spec)


def _parse_metadata(node: Node | None) -> ObjectMeta | None:
    if node is None:
        return None
    name = node.value("name", parse_resource_name, "", required=True)
    namespace = node.value("namespace", parse_namespace, DEFAULT_NAMESPACE)
    labels = node.str_map("labels")
    annotations = node.str_map("annotations")
    node.ignore(*_METADATA_BOOKKEEPING)
    node.unsupported("generateName", "give every resource a fixed name")
    node.done()
    if not name:
        return None
    return ObjectMeta(
        name=name,
        namespace=namespace,
        labels=frozen_map(labels),
        annotations=frozen_map(annotations),
    )


def parse_documents(documents: Iterable[Document]) -> MeshConfig:
    """Validate every document and the whole mesh they form; every problem is reported at once.

    Raises :class:`ConfigError` listing per-document problems first, then whole-mesh ones
    (dangling subset references, duplicates, conflicting hosts).
    """
    from meshware.config.analyze import analyze

    docs = list(documents)
    problems: list[Problem] = []
    resources: list[Resource[Any]] = []
    origins: dict[int, Document] = {}
    for document in docs:
        try:
            resource = parse_document(document)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        origins[id(resource)] = document
        resources.append(resource)
    if problems:
        raise ConfigError(problems)
    problems.extend(analyze(resources, lambda r: origins.get(id(r))))
    if problems:
        raise ConfigError(problems)
    return MeshConfig(tuple(resources))
