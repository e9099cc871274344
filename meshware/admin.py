"""The admin app: liveness, readiness, a dump of the applied config and the workload
certificate (Envoy's admin, in short).

Serve it on its own port (``MESHWARE_ADMIN_PORT`` with ``meshware serve``) or mount it where
you choose; it is never added to the application's routes by the middleware.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from meshware.mesh import Mesh


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def certificate_state(mesh: Mesh) -> dict[str, Any] | None:
    """The workload certificate this process serves with, and how its renewal goes (None
    without credentials). ``renewals`` counts the renewals of the CA-service renewer of this
    process; ``generation`` counts the credential loads of this process (1 + reloads)."""
    from meshware.security.bundle_hint import bundle_digest
    from meshware.security.ca import fingerprint, load_pem_certificates
    from meshware.security.enroll import serving_renewer
    from meshware.security.tls import BUNDLE_FILE, CERT_FILE

    tls = mesh.tls
    if tls is None:
        return None
    try:
        bundle = (tls.directory / BUNDLE_FILE).read_bytes()
        roots = [fingerprint(root) for root in load_pem_certificates(bundle)]
        digest = bundle_digest(bundle)
        issuer = load_pem_certificates((tls.directory / CERT_FILE).read_bytes())[0].issuer
    except Exception:  # being replaced right now: report what is known
        roots, digest, issuer = [], "", None
    renewer = mesh.renewer or serving_renewer()
    return {
        "identity": tls.identity.uri,
        "serial": f"{tls.serial:x}",
        "not_before": _iso(tls.not_before),
        "not_after": _iso(tls.not_after),
        "issuer": issuer.rfc4514_string() if issuer is not None else None,
        "generation": tls.generation,
        "trust_bundle": {"sha256": digest, "roots": roots},
        "renewer": None
        if renewer is None
        else {
            "ca_url": renewer.client.ca_url,
            "renewals": renewer.renewals,
            "last_renewal": _iso(renewer.last_renewal) if renewer.last_renewal else None,
            "next_renewal": _iso(renewer.due) if renewer.due != float("inf") else None,
            "failures": renewer.failures,
            "last_error": renewer.last_error or None,
        },
    }


def build_admin_app(mesh: Mesh) -> Starlette:
    async def metrics(request: Request) -> Response:
        """Istio's golden metrics, Prometheus text format (every worker's, summed)."""
        from meshware.telemetry.exposition import CONTENT_TYPE

        text = await asyncio.to_thread(mesh.metrics.exposition)
        return Response(text, media_type=CONTENT_TYPE)

    async def certs(request: Request) -> Response:
        state = certificate_state(mesh)
        if state is None:
            return JSONResponse({"error": "this instance has no workload certificate"}, 404)
        return JSONResponse(state)

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
            Route("/metrics", metrics),
            Route("/certs", certs),
        ]
    )
