"""Running an ASGI app under uvicorn with graceful mesh draining on SIGTERM/SIGINT.

uvicorn stops accepting connections the moment it gets SIGTERM, before the app's lifespan
shutdown runs, so a mesh that only drained in its lifespan would let callers hit a closed
port. Here the first signal drains first (the instance is marked draining in the registry,
callers stop picking it, in-flight requests finish) and only then lets uvicorn shut down.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn

from meshware.admin_seat import ADMIN_SEAT_ENV, AdminSeat
from meshware.errors import MeshwareError
from meshware.mesh import Mesh
from meshware.security.uvicorn_sniff import (
    protocol_factory,
    serve_in_this_process,
    worker_protocol,
)
from meshware.telemetry.multiproc import METRICS_DIR_ENV, prepare_dir, server_metrics_dir

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
    DrainingServer(secured(config, mesh), mesh).run()


def secured(config: uvicorn.Config, mesh: Mesh) -> uvicorn.Config:
    """``config`` enforcing the mesh's inbound mutual TLS mode (``mesh.inbound_mtls``), live.

    With credentials one port serves mutual TLS (a client certificate issued under the trust
    bundle is required; the verified peer reaches the app) and, when the mode allows it,
    plaintext: see :mod:`meshware.security.uvicorn_sniff`. Without credentials it serves
    plaintext, and refuses every connection while the mode is STRICT (fail closed).
    """
    if config.ssl_certfile or config.ssl_keyfile:
        raise MeshwareError(
            "meshware serves TLS with the workload credentials (cert_dir); "
            "do not pass uvicorn ssl_* options"
        )
    mesh.serve_inbound(config.port)
    config.http = protocol_factory(  # type: ignore[assignment]
        mesh, timeout=mesh.settings.protocol_detection_timeout
    )
    config.loop = "asyncio"  # the loop the connection sniffing is written and tested for
    log.info("inbound mutual TLS: %s; follows PeerAuthentication live", mesh.inbound_mtls)
    return config


def load_target(target: str) -> Any:
    """Import ``module:attribute`` (dots allowed in the attribute)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise MeshwareError(f"expected MODULE:APP, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MeshwareError(f"cannot import {module_name!r}: {exc}") from exc
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise MeshwareError(f"{module_name!r} has no attribute {attribute!r}") from None
    return value


def is_asgi(app: Any) -> bool:
    """ASGI apps are coroutine functions (or objects with an ``async def __call__``)."""
    if inspect.isroutine(app):
        return inspect.iscoroutinefunction(app)
    return inspect.iscoroutinefunction(type(app).__call__)


def find_mesh(target: str) -> Mesh | None:
    """The module's own ``Mesh`` (a global named ``mesh``, or the only Mesh among its globals)."""
    module = sys.modules.get(target.partition(":")[0])
    if module is None:
        return None
    candidate = getattr(module, "mesh", None)
    if isinstance(candidate, Mesh):
        return candidate
    found = [v for v in vars(module).values() if isinstance(v, Mesh)]
    return found[0] if len(found) == 1 else None


def build(target: str) -> tuple[Any, Mesh]:
    """The ASGI app to serve for ``target`` and the mesh it belongs to.

    A WSGI app is adapted with a2wsgi (threads), keeping its request context per thread. An
    app whose module has no Mesh gets one from the environment, with the middleware added.
    """
    from a2wsgi import WSGIMiddleware as WSGIAdapter

    from meshware.middleware.asgi import MeshMiddleware
    from meshware.middleware.wsgi import MeshWSGIMiddleware

    app = load_target(target)
    mesh = find_mesh(target)
    own_mesh = mesh is None
    if mesh is None:
        mesh = Mesh.from_env()
    if is_asgi(app):
        return (MeshMiddleware(app, mesh=mesh) if own_mesh else app), mesh
    wsgi: Any = MeshWSGIMiddleware(app, mesh=mesh) if own_mesh else app
    adapter: Any = WSGIAdapter(wsgi)
    return adapter, mesh


def show_mesh_warnings() -> None:
    """Under ``meshware serve`` the mesh's warnings and errors reach stderr (a library only
    adds a NullHandler): a server that fails closed, a rejected config, must be seen.
    Nothing changes when the application configured logging itself."""
    logger = logging.getLogger("meshware")
    configured = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if configured or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s:  %(name)s: %(message)s"))
    logger.addHandler(handler)


def _worker_inbound(port: int) -> dict[str, Any]:
    """uvicorn options for workers: each enforces its own mesh's mode (see :func:`secured`)."""
    from meshware.security.uvicorn_tls import check_uvicorn

    check_uvicorn()
    os.environ["MESHWARE_SERVE_PORT"] = str(port)
    return {"http": worker_protocol, "loop": "asyncio"}


def worker_app() -> Any:
    """uvicorn factory for multi-worker serving: each worker builds its own app and mesh."""
    app, mesh = build(os.environ["MESHWARE_SERVE_TARGET"])
    show_mesh_warnings()
    mesh.serve_inbound(int(os.environ["MESHWARE_SERVE_PORT"]))
    serve_in_this_process(mesh, timeout=mesh.settings.protocol_detection_timeout)
    return _with_mesh_lifespan(app, mesh)


def _with_mesh_lifespan(app: Any, mesh: Mesh) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            mesh.start()
            seat = AdminSeat.from_env(mesh.admin_app)  # with --admin-port: one worker serves it
            try:
                await _lifespan_passthrough(app, scope, receive, send)
            finally:
                if seat is not None:
                    seat.stop()
                mesh.stop()
            return
        await app(scope, receive, send)

    return wrapped


async def _lifespan_passthrough(app: Any, scope: Any, receive: Any, send: Any) -> None:
    try:
        await app(scope, receive, send)
    except Exception:
        # apps without lifespan support (a2wsgi, plain apps): answer the protocol ourselves
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def serve_target(
    target: str, *, host: str, port: int, workers: int = 1, admin_port: int | None = None
) -> None:
    """Serve ``MODULE:APP`` as a mesh service until a signal (``meshware serve``)."""
    if workers > 1:
        os.environ["MESHWARE_SERVE_TARGET"] = target
        # workers share their metrics through a directory; one of them serves the admin app
        os.environ[METRICS_DIR_ENV] = str(prepare_dir(server_metrics_dir(port)))
        if admin_port is not None:
            os.environ[ADMIN_SEAT_ENV] = f"{host}:{admin_port}"
        uvicorn.run(
            "meshware.serving:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            lifespan="on",
            **_worker_inbound(port),
        )
        return
    app, mesh = build(target)
    show_mesh_warnings()
    mesh.serve_inbound(port)  # before it registers: the record advertises what it serves
    mesh.start()
    admin: uvicorn.Server | None = None
    if admin_port is not None:
        admin = uvicorn.Server(
            uvicorn.Config(mesh.admin_app, host=host, port=admin_port, log_level="warning")
        )
        threading.Thread(target=admin.run, name="meshware-admin", daemon=True).start()
    try:
        config = uvicorn.Config(app, host=host, port=port, lifespan="auto", log_level="info")
        DrainingServer(secured(config, mesh), mesh).run()
    finally:
        if admin is not None:
            admin.should_exit = True
        mesh.stop()
