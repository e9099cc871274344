"""Traffic mirroring: which shadow copies of a request to send, and how to mark them.

Mirroring tests a new version with real traffic at no risk to the caller: the copy is
fire-and-forget and its response is dropped. Each mirror of a route samples its own percentage
independently (as Envoy's ``request_mirror_policies`` do), and the copy's authority gets
Envoy's ``-shadow`` suffix so the receiving service, its logs and its metrics can tell shadow
traffic from real traffic (and, e.g., skip side effects).
"""

from __future__ import annotations

import random

from meshware.config.model.networking import Destination, HTTPRoute
from meshware.resilience.fault import fires


def decide_mirrors(route: HTTPRoute, rng: random.Random) -> tuple[Destination, ...]:
    """The destinations that get a copy of this request (one draw per mirror)."""
    mirrors = route.all_mirrors
    if not mirrors:
        return ()
    return tuple(m.destination for m in mirrors if fires(m.percentage, rng))


def shadow_authority(authority: str) -> str:
    """Envoy's shadow host: ``-shadow`` appended to the host, before any port.

    ``reviews:9080`` → ``reviews-shadow:9080``, ``reviews`` → ``reviews-shadow``,
    ``[::1]:80`` → ``[::1]-shadow:80``.
    """
    colon = authority.rfind(":")
    bracket = authority.rfind("]")
    if colon == -1 or bracket > colon:
        return f"{authority}-shadow"
    return f"{authority[:colon]}-shadow{authority[colon:]}"
