"""meshware: a proxyless service mesh for Python web services."""

import logging

from meshware.config.model.mesh import MeshConfig
from meshware.config.watch import Snapshot
from meshware.errors import (
    ApplyConflictError,
    ConfigError,
    ControlPlaneError,
    MeshStateError,
    MeshwareError,
    NotFoundError,
    Problem,
)
from meshware.mesh import Mesh
from meshware.settings import Settings

__version__ = "0.1.0"

logging.getLogger("meshware").addHandler(logging.NullHandler())

__all__ = [
    "ApplyConflictError",
    "ConfigError",
    "ControlPlaneError",
    "Mesh",
    "MeshConfig",
    "MeshStateError",
    "MeshwareError",
    "NotFoundError",
    "Problem",
    "Settings",
    "Snapshot",
    "__version__",
]
