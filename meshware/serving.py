"""Running an ASGI app under uvicorn with graceful mesh draining on SIGTERM/SIGINT.

uvicorn stops accepting connections the moment it gets SIGTERM, before the app's lifespan
shutdown runs, so a mesh that only drained in its lifespan would let callers hit a closed
port. Here the first signal drains first (the instance is marked draining in the registry,
callers stop picking it, in-flight requests finish) and only then lets uvicorn shut down.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any

import uvicorn

from meshware.mesh import Mesh

log = logging.getLogger("meshware.serving")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the mesh before shutting down."""

    def __init__(self, config: uvicorn.Config, mesh: Mesh, *, drain_timeout: float = 15.0) -> None:
        super().__init__(config)
        self.mesh = mesh
        self.drain_timeout = drain_timeout
        self._draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return

        def drain_then_exit() -> None:
            try:
                self.mesh.drain(timeout=self.drain_timeout)
            finally:
                self.should_exit = True

        log.info("draining %s before shutdown", self.mesh.instance_id)
        self._draining = threading.Thread(
            target=drain_then_exit, name="meshware-drain", daemon=True
        )
        self._draining.start()


def run(
    app: Any, mesh: Mesh, *, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any
) -> None:
    """Serve ``app`` (already wrapped with :class:`~meshware.MeshMiddleware`) until a signal."""
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", **uvicorn_options)
    DrainingServer(config, mesh).run()
