"""A small toolkit for reading untrusted YAML/JSON mappings into typed values.

A :class:`Node` wraps one mapping together with its field path (``spec.http[0]``) and a
shared :class:`Problems` collector. Every accessor checks the type and range of one field and
records a problem (with the full path) instead of raising, so one pass reports every mistake
in a document. :meth:`Node.done` reports fields nobody asked for: a typo (with a suggestion)
or an Istio field meshware does not implement (declared with :meth:`Node.unsupported`).

Accessors always return a usable placeholder after recording a problem, so parsers stay
straight-line code; the caller discards the result whenever ``problems`` is non-empty.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from meshware.errors import Problem

T = TypeVar("T")

_MISSING: Any = object()


class Problems:
    """Collects problems for one document; shared by every :class:`Node` made from it."""

    def __init__(self, source: str = "", document: int = 0, resource: str = "") -> None:
        self.source = source
        self.document = document
        self.resource = resource
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(
            Problem(
                message=message,
                path=path,
                resource=self.resource,
                source=self.source,
                document=self.document,
            )
        )

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def type_name(value: object) -> str:
    """A YAML-ish name for the type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Node:
    """One mapping being read, with its path; see the module docstring."""

    __slots__ = ("_consumed", "_unsupported", "data", "path", "problems")

    def __init__(self, data: Mapping[str, Any], path: str, problems: Problems) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self._consumed: set[str] = set()
        self._unsupported: dict[str, str] = {}

    # -- plumbing -------------------------------------------------------------------------

    @classmethod
    def root(cls, value: object, path: str, problems: Problems) -> Node:
        """Wrap ``value``, recording a problem (and returning an empty node) if not a mapping."""
        if isinstance(value, Mapping):
            return cls(value, path, problems)
        problems.add(path, f"must be a mapping, got {type_name(value)}")
        return cls({}, path, problems)

    def at(self, key: str) -> str:
        """The path of ``key`` below this node."""
        return join(self.path, key)

    def error(self, key: str | None, message: str) -> None:
        """Record a problem at ``key`` (or at this node when ``key`` is None)."""
        self.problems.add(self.at(key) if key else self.path, message)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        """The raw value of ``key`` (None when absent), marking it consumed."""
        self._consumed.add(key)
        return self.data.get(key)

    def _get(self, key: str, required: bool) -> Any:
        self._consumed.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.error(key, "is required")
            return _MISSING
        return value

    def keys(self) -> Iterator[str]:
        return iter(self.data)

    # -- scalars --------------------------------------------------------------------------

    def string(
        self, key: str, *, required: bool = False, default: str = "", nonempty: bool = False
    ) -> str:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, str):
            if nonempty and not value:
                self.error(key, "must not be empty")
            return value
        self.error(key, f"must be a string, got {type_name(value)}")
        return default

    def enum(
        self, key: str, choices: tuple[str, ...], *, required: bool = False, default: str = ""
    ) -> str:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str) or value not in choices:
            self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        return value

    def integer(
        self,
        key: str,
        *,
        required: bool = False,
        default: int = 0,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, got {type_name(value)} {value!r}")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.error(key, f"must be {_range_text(minimum, maximum)}, got {value}")
            return default
        return value

    def number(
        self,
        key: str,
        *,
        required: bool = False,
        default: float = 0.0,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.error(key, f"must be a number, got {type_name(value)} {value!r}")
            return default
        number = float(value)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            self.error(key, f"must be {_range_text(minimum, maximum)}, got {value}")
            return default
        return number

    def boolean(self, key: str, *, required: bool = False, default: bool = False) -> bool:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, got {type_name(value)} {value!r}")
            return default
        return value

    def value(
        self, key: str, convert: Callable[[Any], T], default: T, *, required: bool = False
    ) -> T:
        """Read ``key`` with ``convert``, which raises ``ValueError(message)`` on bad input."""
        value = self._get(key, required)
        if value is _MISSING:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    # -- containers -----------------------------------------------------------------------

    def node(self, key: str, *, required: bool = False) -> Node | None:
        """The mapping at ``key`` as a child node, or None when absent (or not a mapping)."""
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping, got {type_name(value)}")
            return None
        return Node(value, self.at(key), self.problems)

    def nodes(self, key: str, *, required: bool = False, nonempty: bool = False) -> list[Node]:
        """The list of mappings at ``key``, each as a child node (``key[i]``)."""
        items = self._list(key, required=required, nonempty=nonempty)
        out: list[Node] = []
        for i, item in enumerate(items):
            path = f"{self.at(key)}[{i}]"
            if isinstance(item, Mapping):
                out.append(Node(item, path, self.problems))
            else:
                self.problems.add(path, f"must be a mapping, got {type_name(item)}")
        return out

    def str_list(
        self, key: str, *, required: bool = False, nonempty: bool = False
    ) -> tuple[str, ...]:
        items = self._list(key, required=required, nonempty=nonempty)
        out: list[str] = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append(item)
            else:
                self.problems.add(
                    f"{self.at(key)}[{i}]", f"must be a string, got {type_name(item)}"
                )
        return tuple(out)

    def str_map(self, key: str, *, required: bool = False) -> dict[str, str]:
        """A mapping of string to string (labels, headers to set)."""
        value = self._get(key, required)
        if value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping of strings, got {type_name(value)}")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.error(key, f"keys must be strings, got {type_name(k)} {k!r}")
            elif not isinstance(v, str):
                self.problems.add(f"{self.at(key)}.{k}", f"must be a string, got {type_name(v)}")
            else:
                out[k] = v
        return out

    def node_map(self, key: str, *, required: bool = False) -> dict[str, Node]:
        """A mapping of string to mapping (e.g. ``headers: {name: {exact: v}}``)."""
        value = self._get(key, required)
        if value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping, got {type_name(value)}")
            return {}
        out: dict[str, Node] = {}
        for k, v in value.items():
            path = f"{self.at(key)}.{k}"
            if not isinstance(k, str):
                self.error(key, f"keys must be strings, got {type_name(k)} {k!r}")
            elif not isinstance(v, Mapping):
                self.problems.add(path, f"must be a mapping, got {type_name(v)}")
            else:
                out[k] = Node(v, path, self.problems)
        return out

    def _list(self, key: str, *, required: bool, nonempty: bool) -> list[Any]:
        value = self._get(key, required)
        if value is _MISSING:
            return []
        if not isinstance(value, list | tuple):
            self.error(key, f"must be a list, got {type_name(value)}")
            return []
        if nonempty and not value:
            self.error(key, "must not be empty")
        return list(value)

    # -- completeness ---------------------------------------------------------------------

    def unsupported(self, key: str, why: str = "") -> None:
        """Declare ``key`` an Istio field that meshware does not implement."""
        self._unsupported[key] = why

    def ignore(self, *keys: str) -> None:
        """Accept ``keys`` without acting on them (bookkeeping fields only, never features)."""
        self._consumed.update(keys)

    def done(self) -> None:
        """Report every field that no accessor read: unsupported features or unknown names."""
        known = sorted(self._consumed)
        for key in self.data:
            if key in self._consumed:
                continue
            if key in self._unsupported:
                why = self._unsupported[key]
                self.error(str(key), "is not supported by meshware" + (f": {why}" if why else ""))
                continue
            message = "unknown field"
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            self.error(str(key), message)


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"between {minimum:g} and {maximum:g}"
    if minimum is not None:
        return f"at least {minimum:g}"
    return f"at most {maximum:g}"
