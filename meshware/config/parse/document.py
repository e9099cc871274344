"""YAML text → :class:`Document`: raw mappings that remember where they came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshware.config.parse.reader import type_name
from meshware.errors import ConfigError, Problem


@dataclass(frozen=True, slots=True)
class Document:
    """One raw YAML/JSON document and its origin (file name and 1-based document number)."""

    body: Mapping[str, Any]
    source: str = ""
    index: int = 0


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and keeps timestamps as strings (JSON-safe)."""


def _construct_mapping(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    # Keys written twice in one mapping are an error; keys brought in by a `<<` merge may be
    # overridden, as YAML specifies.
    explicit: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in explicit:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        explicit.add(key)
    loader.flatten_mapping(node)
    return {
        loader.construct_object(k, deep=True): loader.construct_object(v, deep=True)
        for k, v in node.value
    }


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _timestamp_as_text(loader: _StrictLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def load_yaml(text: str, source: str = "<input>") -> list[Document]:
    """Split multi-document YAML (or JSON) into documents; empty documents are skipped.

    Raises :class:`ConfigError` naming the source, document and line for a syntax error or a
    document that is not a mapping.
    """
    documents: list[Document] = []
    problems: list[Problem] = []
    index = 0
    try:
        for index, body in enumerate(yaml.load_all(text, Loader=_StrictLoader), start=1):
            if body is None:
                continue
            for item in _expand(body):
                if isinstance(item, dict):
                    documents.append(Document(body=item, source=source, index=index))
                else:
                    problems.append(
                        Problem(
                            f"a resource must be a mapping, got {type_name(item)}",
                            source=source,
                            document=index,
                        )
                    )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        problems.append(
            Problem(f"YAML syntax error{where}: {reason}", source=source, document=index + 1)
        )
    if problems:
        raise ConfigError(problems)
    return documents


def _expand(body: Any) -> list[Any]:
    """A document, or the items of a JSON array / Kubernetes ``kind: List`` document."""
    if isinstance(body, list):
        return body
    if (
        isinstance(body, dict)
        and body.get("kind") == "List"
        and isinstance(body.get("items"), list)
        and set(body) <= {"apiVersion", "kind", "items", "metadata"}
    ):
        return list(body["items"])
    return [body]


def load_files(paths: Iterable[str | Path]) -> list[Document]:
    """Read and split every file (``-`` is standard input); all problems are reported together."""
    documents: list[Document] = []
    problems: list[Problem] = []
    for path in paths:
        name = str(path)
        try:
            if name == "-":
                import sys

                text = sys.stdin.read()
                name = "<stdin>"
            else:
                text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(f"cannot read file: {exc}", source=name))
            continue
        try:
            documents.extend(load_yaml(text, name))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return documents
