"""The view of an outbound request that routing decisions read (built once per request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from types import MappingProxyType
from urllib.parse import parse_qsl

EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What routing may look at: no body, no I/O objects, header names lower-cased.

    ``host`` is the logical host as written by the caller (``reviews`` in
    ``http://reviews:9080/...``), lower-cased and without the port. ``headers`` keeps the first
    value of each header (repeated headers are joined with ``", "`` as HTTP allows).
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
