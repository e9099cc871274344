"""Parsers for ``networking.istio.io`` resources."""

from __future__ import annotations

from meshware.config.parse.kinds import KindSpec

KINDS: tuple[KindSpec, ...] = ()
