"""The one exception tree of meshware.

::

    MeshwareError                 anything meshware raises on purpose
    ├── ConfigError               configuration is invalid; carries every Problem found
    ├── ControlPlaneError         the config channel (Redis) cannot be used
    │   └── ApplyConflictError    concurrent writers kept changing the config; nothing stored
    ├── NotFoundError             a named resource or config version does not exist
    ├── MeshStateError            the runtime was used in a state that does not allow it
    └── MeshTransportError        an outbound call failed inside the mesh (also an
        │                         ``httpx.TransportError``, so httpx users catch it as usual)
        ├── NoRouteError          no route matched the request (Envoy's "NR")
        ├── EgressBlockedError    the host is outside the mesh and egress is REGISTRY_ONLY
        ├── NoHealthyUpstreamError  no endpoint of the destination can take the request
        ├── UpstreamOverflowError the destination's pending-request limit is reached
        └── UpstreamTimeoutError  the route's overall timeout expired (an httpx.TimeoutException)

Foreign exceptions (``redis.RedisError``, ``yaml.YAMLError``, ``OSError``) are translated at
the boundary with ``raise ... from exc`` so callers only ever catch these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx


class MeshwareError(Exception):
    """Base class of every error meshware raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration, located as precisely as we can."""

    message: str
    path: str = ""
    """Field path inside the document, e.g. ``spec.http[0].route[1].weight``."""
    resource: str = ""
    """``Kind/name`` of the resource, e.g. ``VirtualService/reviews``."""
    source: str = ""
    """Where the document came from: a file name, ``<stdin>`` or ``redis``."""
    document: int = 0
    """1-based index of the YAML document within ``source``; 0 when not applicable."""

    def __str__(self) -> str:
        where = []
        if self.source:
            where.append(
                f"{self.source}" + (f" (document {self.document})" if self.document else "")
            )
        elif self.document:
            where.append(f"document {self.document}")
        if self.resource:
            where.append(self.resource)
        if self.path:
            where.append(self.path)
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(MeshwareError):
    """Configuration is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems:"]
        lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)


class ControlPlaneError(MeshwareError):
    """The config channel (Redis) could not be reached or answered unexpectedly."""


class ApplyConflictError(ControlPlaneError):
    """Other writers changed the config on every attempt; nothing was stored."""


class NotFoundError(MeshwareError):
    """A named resource or config version does not exist."""


class MeshStateError(MeshwareError):
    """The mesh runtime was used in a state that does not allow it (e.g. started twice)."""


class MeshTransportError(MeshwareError, httpx.TransportError):
    """An outbound request failed inside the mesh, before or instead of an upstream answer."""

    response_flag = ""
    """Envoy's response flag for this failure (``NR``, ``UH``, ``UO``, ...), for telemetry."""


class NoRouteError(MeshTransportError):
    """No route of the destination's VirtualService matched the request."""

    response_flag = "NR"


class EgressBlockedError(MeshTransportError):
    """The host is not in the mesh registry and outbound traffic is REGISTRY_ONLY."""

    response_flag = "NR"


class NoHealthyUpstreamError(MeshTransportError):
    """Every endpoint of the destination is missing, ejected, draining or failed."""

    response_flag = "UH"


class UpstreamOverflowError(MeshTransportError):
    """The destination's connection pool is full and its pending-request limit reached."""

    response_flag = "UO"


class UpstreamTimeoutError(MeshTransportError, httpx.TimeoutException):
    """The route's overall timeout (retries included) expired before a response arrived."""

    response_flag = "UT"
