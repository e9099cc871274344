"""A small real upstream service joined to the mesh, runnable as its own process.

    python -m tests.upstream_app --service reviews --version v1 --port 9080 \
        --redis-url redis://127.0.0.1:6379/0 --state-dir /tmp/x [--log FILE]

Every request is appended to ``--log`` (one JSON line: method, path, host, headers) before it
is answered, so tests can count what the upstream really received. Endpoints:

* any path: 200 with JSON {service, version, method, path, host, headers}
* ``/status/<code>``: answers with that status
* ``/sleep/<seconds>``: answers after sleeping
* ``POST /die``: reads the body, logs it, then kills the process without answering
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshware import Mesh, MeshMiddleware, serving


def build_app(mesh: Mesh, log: Path | None, delay: float = 0.0) -> Starlette:
    async def handle(request: Request) -> Response:
        body = await request.body()
        record = {
            "t": time.time(),
            "service": mesh.service,
            "version": mesh.version,
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "host": request.headers.get("host", ""),
            "headers": dict(request.headers.items()),
            "body": body.decode(errors="replace"),
        }
        if log is not None:
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
        path = request.url.path
        if delay and path != "/ready":
            await asyncio.sleep(delay)
            if log is not None:
                with log.open("a") as f:
                    f.write(json.dumps({"done": path, "host": record["host"]}) + "\n")
        if path.startswith("/status/"):
            return Response(status_code=int(path.rsplit("/", 1)[1]), content=f"{mesh.version}")
        if path.startswith("/sleep/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        if path == "/die" and request.method == "POST":
            os._exit(3)
        return JSONResponse(record, headers={"x-upstream-version": mesh.version})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", handle, methods=methods)], lifespan=mesh.lifespan)
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--log", default=None)
    parser.add_argument("--delay", type=float, default=0.0, help="sleep before every answer")
    args = parser.parse_args()
    mesh = Mesh(
        args.service,
        args.version,
        redis_url=args.redis_url,
        address=f"127.0.0.1:{args.port}",
        state_dir=args.state_dir,
        heartbeat_interval=0.2,
        instance_ttl=3.0,
    )
    app = build_app(mesh, Path(args.log) if args.log else None, args.delay)
    serving.run(app, mesh, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
