"""The view of an outbound request that routing decisions read (built once per request)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from types import MappingProxyType
from typing import TypeVar, overload
from urllib.parse import parse_qsl

EMPTY: Mapping[str, str] = MappingProxyType({})

_T = TypeVar("_T")

Field = tuple[bytes, bytes, bytes]
"""One header field: (name as sent, lower-case name, value)."""


class HeaderFields(Mapping[str, str]):
    """Header fields by lower-case name, decoded only when looked up.

    Routing usually reads one header or none, so decoding every field of every request
    into a dict would be wasted work: a lookup scans the (short) field list instead and
    joins repeated fields with ``", "`` as HTTP allows. Iterating decodes everything once.
    """

    __slots__ = ("_decoded", "_fields")

    def __init__(self, fields: Sequence[Field]) -> None:
        self._fields = fields
        self._decoded: dict[str, str] | None = None

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, /, default: str | _T) -> str | _T: ...
    def get(self, key: str, /, default: object = None) -> object:
        wanted = key.encode("latin-1", "replace")
        found: str | None = None
        for _, name, value in self._fields:
            if name == wanted:
                text = value.decode("latin-1")
                found = text if found is None else f"{found}, {text}"
        return default if found is None else found

    def __getitem__(self, key: str) -> str:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        wanted = key.encode("latin-1", "replace")
        return any(name == wanted for _, name, _ in self._fields)

    def _all(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = {}
            for _, name, value in self._fields:
                key, text = name.decode("latin-1"), value.decode("latin-1")
                decoded[key] = f"{decoded[key]}, {text}" if key in decoded else text
            self._decoded = decoded
        return decoded

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"HeaderFields({self._all()!r})"


@dataclass(slots=True)
class RequestInfo:
    """What routing may look at: no body, no I/O objects, header names lower-cased.

    ``host`` is the logical host as written by the caller (``reviews`` in
    ``http://reviews:9080/...``), lower-cased and without the port. ``headers`` keeps the first
    value of each header (repeated headers are joined with ``", "`` as HTTP allows).

    Treat it as immutable; it is not a frozen dataclass because it is built for every
    outbound call and freezing makes that several times slower.
    """

    method: str
    host: str
    path: str = "/"
    query: str = ""
    scheme: str = "http"
    port: int | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    source_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    source_namespace: str = "default"

    @property
    def authority(self) -> str:
        """``host[:port]`` as the Host header would carry it (the ``host`` header if set)."""
        explicit = self.headers.get("host")
        if explicit:
            return explicit
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def query_params(self) -> dict[str, str]:
        """Query parameters (first value of each name)."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name`` from the ``cookie`` header, if any."""
        raw = self.headers.get("cookie")
        if not raw:
            return None
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None
