"""meshware: a proxyless service mesh for Python web services."""

import logging

from meshware._version import __version__
from meshware.config.model.mesh import MeshConfig
from meshware.config.watch import Snapshot
from meshware.errors import (
    ApplyConflictError,
    ConfigError,
    ControlPlaneError,
    EgressBlockedError,
    MeshStateError,
    MeshTransportError,
    MeshwareError,
    NoHealthyUpstreamError,
    NoRouteError,
    NotFoundError,
    Problem,
    UpstreamOverflowError,
    UpstreamTimeoutError,
)
from meshware.mesh import Mesh
from meshware.middleware.asgi import MeshMiddleware
from meshware.middleware.context import current as current_request
from meshware.middleware.wsgi import MeshWSGIMiddleware
from meshware.security.peer import peer_identity
from meshware.settings import Settings
from meshware.transport.aio import AsyncMeshTransport
from meshware.transport.sync import MeshTransport

logging.getLogger("meshware").addHandler(logging.NullHandler())

__all__ = [
    "ApplyConflictError",
    "AsyncMeshTransport",
    "ConfigError",
    "ControlPlaneError",
    "EgressBlockedError",
    "Mesh",
    "MeshConfig",
    "MeshMiddleware",
    "MeshStateError",
    "MeshTransport",
    "MeshTransportError",
    "MeshWSGIMiddleware",
    "MeshwareError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "NotFoundError",
    "Problem",
    "Settings",
    "Snapshot",
    "UpstreamOverflowError",
    "UpstreamTimeoutError",
    "__version__",
    "current_request",
    "peer_identity",
]
