"""A mesh service for the metrics tests, run with ``meshware serve``.

    meshware serve tests.telemetry.metrics_app:app --service backend --admin-port P
    meshware serve tests.telemetry.metrics_app:wsgi --service backend      (Flask)

* ``GET /status/<code>``: answers ``code`` with a 10-byte body;
* ``GET /item/<anything>``: 200 (many distinct paths, one series);
* ``GET /load?target=T&path=/status/200&n=N``: makes ``N`` calls to ``http://T<path>`` through
  the mesh client, one after the other, and answers the status codes it got (JSON list);
  ``-1`` for a call that raised;
* ``GET /seen-peer``: whether the app saw a peer metadata header (it never should).
"""

from __future__ import annotations

from typing import Any

import httpx
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshware import Mesh, MeshMiddleware, MeshWSGIMiddleware

mesh = Mesh.from_env()
client = mesh.async_client(timeout=10)
seen_peer_header: list[str] = []


async def status(request: Request) -> Response:
    if "x-meshware-peer" in request.headers:
        seen_peer_header.append(request.headers["x-meshware-peer"])
    return Response(b"0123456789", status_code=int(request.path_params["code"]))


async def item(request: Request) -> Response:
    return Response(b"item")


async def load(request: Request) -> JSONResponse:
    target = request.query_params["target"]
    path = request.query_params.get("path", "/status/200")
    codes: list[int] = []
    peer_headers = 0
    for _ in range(int(request.query_params.get("n", "1"))):
        try:
            response = await client.get(f"http://{target}{path}")
        except httpx.HTTPError:
            codes.append(-1)
            continue
        codes.append(response.status_code)
        peer_headers += "x-meshware-peer" in response.headers
    return JSONResponse({"codes": codes, "peer_headers_seen": peer_headers})


async def seen_peer(request: Request) -> JSONResponse:
    return JSONResponse({"seen": seen_peer_header})


app = Starlette(
    routes=[
        Route("/status/{code:int}", status),
        Route("/item/{rest:path}", item),
        Route("/load", load),
        Route("/seen-peer", seen_peer),
    ],
    lifespan=mesh.lifespan,
)
app.add_middleware(MeshMiddleware, mesh=mesh)

flask_app = Flask("metrics")


@flask_app.get("/status/<int:code>")
def flask_status(code: int) -> Any:
    if "x-meshware-peer" in flask_request.headers:
        seen_peer_header.append(flask_request.headers["x-meshware-peer"])
    return b"0123456789", code


@flask_app.get("/seen-peer")
def flask_seen_peer() -> Any:
    return {"seen": seen_peer_header}


flask_app.wsgi_app = MeshWSGIMiddleware(flask_app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
wsgi = flask_app
