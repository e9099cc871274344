"""A mesh service for rotation tests: like :mod:`tests.tls_app`, but every third response
closes its connection (``Connection: close``), so callers keep making new TLS handshakes
with whatever credentials are current, instead of riding one pooled connection through
every rotation.

    meshware serve tests.rotation_app:app --service ratings --ca-url URL ...

``GET /whoami`` answers the caller's verified SPIFFE ID; ``GET /call/<service>`` calls that
service's ``/whoami`` through the mesh client.
"""

from __future__ import annotations

import itertools

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshware import Mesh, MeshMiddleware, peer_identity

mesh = Mesh.from_env()
client = mesh.async_client(timeout=10)
_count = itertools.count()


def _answer(body: dict[str, object]) -> JSONResponse:
    headers = {"connection": "close"} if next(_count) % 3 == 2 else {}
    return JSONResponse(body, headers=headers)


async def whoami(request: Request) -> JSONResponse:
    return _answer({"service": mesh.service, "peer": peer_identity()})


async def call(request: Request) -> JSONResponse:
    response = await client.get(f"http://{request.path_params['service']}/whoami")
    return _answer({"status": response.status_code, "body": response.json()})


app = Starlette(
    routes=[Route("/whoami", whoami), Route("/call/{service}", call)],
    lifespan=mesh.lifespan,
)
app.add_middleware(MeshMiddleware, mesh=mesh)
