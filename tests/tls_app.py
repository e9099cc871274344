"""A mesh service for mutual TLS tests: reports who called it and what it received.

    meshware serve tests.tls_app:app --service ratings --cert-dir DIR
    meshware serve tests.tls_app:wsgi --service ratings --cert-dir DIR     (Flask)

``GET /whoami`` answers the caller's verified SPIFFE ID and any identity header that reached
the app; ``GET /call/<service>`` calls that service's ``/whoami`` through the mesh client (so
the callee sees this service's identity); ``GET /seen`` counts the requests it received.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshware import Mesh, MeshMiddleware, MeshWSGIMiddleware, peer_identity

mesh = Mesh.from_env()
client = mesh.async_client(timeout=5)
seen = 0


async def whoami(request: Request) -> JSONResponse:
    global seen
    seen += 1
    return JSONResponse(
        {
            "service": mesh.service,
            "peer": peer_identity(),
            "xfcc": request.headers.get("x-forwarded-client-cert"),
        }
    )


async def call(request: Request) -> JSONResponse:
    response = await client.get(f"http://{request.path_params['service']}:9080/whoami")
    return JSONResponse({"status": response.status_code, "body": response.json()})


async def count(request: Request) -> JSONResponse:
    return JSONResponse({"seen": seen})


app = Starlette(
    routes=[Route("/whoami", whoami), Route("/call/{service}", call), Route("/seen", count)],
    lifespan=mesh.lifespan,
)
app.add_middleware(MeshMiddleware, mesh=mesh)

flask_app = Flask("tls")


@flask_app.get("/whoami")
def flask_whoami() -> Any:
    return {
        "service": mesh.service,
        "peer": peer_identity(),
        "xfcc": flask_request.headers.get("x-forwarded-client-cert"),
    }


flask_app.wsgi_app = MeshWSGIMiddleware(flask_app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
wsgi = flask_app
