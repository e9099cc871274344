"""Kind names and short aliases accepted on the command line (``vs``, ``dr``, ...)."""

from __future__ import annotations

from meshware.config.parse import KINDS

_ALIASES = {
    "vs": "VirtualService",
    "dr": "DestinationRule",
    "se": "ServiceEntry",
    "pa": "PeerAuthentication",
    "ap": "AuthorizationPolicy",
    "authz": "AuthorizationPolicy",
    "ro": "Rollout",
}


def resolve_kind(text: str) -> str:
    """``vs``, ``virtualservice``, ``VirtualServices`` → ``VirtualService``; ``ValueError`` if unknown."""
    lowered = text.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    for kind in KINDS:
        name = kind.lower()
        if lowered in (name, name + "s", name + "es") or (
            name.endswith("y") and lowered == name[:-1] + "ies"
        ):
            return kind
    known = ", ".join(sorted(KINDS))
    raise ValueError(f"unknown kind {text!r}; use one of {known} (or vs, dr, se, pa, ap, ro)")
