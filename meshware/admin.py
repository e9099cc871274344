"""The admin app: liveness, readiness and a dump of the applied config (Envoy's admin, in short).

Serve it on its own port (``MESHWARE_ADMIN_PORT`` with ``meshware serve``) or mount it where
you choose; it is never added to the application's routes by the middleware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from meshware.mesh import Mesh


def build_admin_app(mesh: Mesh) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if mesh.draining:
            return PlainTextResponse("draining\n", status_code=503)
        if not mesh.ready:
            return PlainTextResponse("config not loaded yet\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def config_dump(request: Request) -> Response:
        snapshot = mesh.snapshot
        nack = mesh.watcher.nack
        endpoints = {
            host: [
                {
                    "address": e.address,
                    "instance": e.instance,
                    "labels": dict(e.labels),
                    "draining": e.draining,
                }
                for e in entries
            ]
            for host, entries in mesh.endpoint_table.services.items()
        }
        return JSONResponse(
            {
                "instance": mesh.instance_id,
                "service": mesh.service,
                "version": mesh.version,
                "namespace": mesh.namespace,
                "labels": dict(mesh.labels),
                "connected": mesh.connected,
                "draining": mesh.draining,
                "config": {
                    "version": snapshot.version,
                    "epoch": snapshot.epoch,
                    "digest": snapshot.digest,
                    "source": snapshot.source,
                    "applied_at": snapshot.applied_at,
                    "resources": list(snapshot.documents),
                },
                "nack": None
                if nack is None
                else {"version": nack.version, "epoch": nack.epoch, "reason": nack.reason},
                "endpoints": endpoints,
            }
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/config_dump", config_dump),
        ]
    )
