"""The middleware on real servers: propagation across ASGI and WSGI hops, pass-through scopes,
streaming, close(), the admin app."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from werkzeug.serving import make_server

from meshware import Mesh, MeshMiddleware, MeshWSGIMiddleware, current_request
from tests.helpers import wait_until
from tests.servers import free_port, serve_asgi
from tests.transport.conftest import wait_for_endpoints

PROPAGATED = ("traceparent", "tracestate", "baggage", "x-request-id")


@pytest.fixture
def exits() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def serve_wsgi(app: Any, port: int, exits: ExitStack) -> None:
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(10)

    exits.callback(stop)


def ratings_app(mesh: Mesh) -> Any:
    """Flask, the leaf: reports what it received."""
    app = Flask("ratings")

    @app.get("/ratings/<int:item>")
    def ratings(item: int) -> Any:
        return jsonify({"headers": {h: flask_request.headers.get(h, "") for h in PROPAGATED}})

    app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
    return app


def details_app(mesh: Mesh) -> Any:
    """Flask in the middle: calls ratings from the request thread, forwards no header."""
    app = Flask("details")
    client = mesh.client(timeout=10)

    @app.get("/details/<int:item>")
    def details(item: int) -> Any:
        downstream = client.get(f"http://ratings/ratings/{item}").json()
        mine = {h: flask_request.headers.get(h, "") for h in PROPAGATED}
        return jsonify({"mine": mine, "ratings": downstream})

    app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
    return app


def reviews_app(mesh: Mesh) -> Starlette:
    """Starlette in the middle: calls ratings twice, concurrently, forwarding nothing."""

    async def reviews(request: Request) -> JSONResponse:
        async with mesh.async_client(timeout=10) as client:
            first, second = await asyncio.gather(
                client.get("http://ratings/ratings/1"), client.get("http://ratings/ratings/2")
            )
            third = await asyncio.create_task(client.get("http://ratings/ratings/3"))
        mine = {h: request.headers.get(h, "") for h in PROPAGATED}
        return JSONResponse({"mine": mine, "ratings": [r.json() for r in (first, second, third)]})

    app = Starlette(routes=[Route("/reviews/{item}", reviews)])
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def join(make_mesh: Callable[..., Mesh], service: str) -> tuple[Mesh, int]:
    port = free_port()
    return make_mesh(service, "v1", address=f"127.0.0.1:{port}").start(), port


def test_context_reaches_every_hop_asgi_and_wsgi(
    make_mesh: Callable[..., Mesh], exits: ExitStack
) -> None:
    ratings, ratings_port = join(make_mesh, "ratings")
    serve_wsgi(ratings_app(ratings), ratings_port, exits)
    reviews, reviews_port = join(make_mesh, "reviews")
    exits.enter_context(serve_asgi(reviews_app(reviews), port=reviews_port))
    details, details_port = join(make_mesh, "details")
    serve_wsgi(details_app(details), details_port, exits)
    caller = make_mesh("productpage", "v1", discovery_interval=0.2).start()
    for service in ("ratings", "reviews", "details"):
        wait_for_endpoints(caller, service, 1)
        wait_for_endpoints(reviews, "ratings", 1)
        wait_for_endpoints(details, "ratings", 1)

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = {
        "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
        "tracestate": "rojo=00f067aa0ba902b7",
        "baggage": "userId=alice,tier=gold",
        "x-request-id": "req-42",
    }
    with caller.client(timeout=10) as client:
        via_asgi = client.get("http://reviews/reviews/1", headers=incoming).json()
        via_wsgi = client.get("http://details/details/1", headers=incoming).json()

    for hop in (via_asgi["mine"], via_wsgi["mine"]):
        assert hop == incoming  # what the test sent, received as sent
    leaves = [r["headers"] for r in via_asgi["ratings"]] + [via_wsgi["ratings"]["headers"]]
    parents = set()
    for leaf in leaves:
        version, trace_id, parent, flags = leaf["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", trace, "01")
        assert parent != "00f067aa0ba902b7"  # a new parent: the middle hop's span
        parents.add(parent)
        assert leaf["tracestate"] == incoming["tracestate"]
        assert leaf["baggage"] == incoming["baggage"]
        assert leaf["x-request-id"] == "req-42"
    assert len(parents) == 2  # one span per middle-hop request (reviews, details)


def test_without_incoming_context_a_trace_and_request_id_are_started(
    make_mesh: Callable[..., Mesh], exits: ExitStack
) -> None:
    ratings, ratings_port = join(make_mesh, "ratings")
    serve_wsgi(ratings_app(ratings), ratings_port, exits)
    details, details_port = join(make_mesh, "details")
    serve_wsgi(details_app(details), details_port, exits)
    wait_for_endpoints(details, "ratings", 1)
    garbage = {
        "traceparent": "00-zz-yy-01",
        "baggage": "no-equals",
        "x-meshware-deadline-ms": "soon",
    }
    body = httpx.get(
        f"http://127.0.0.1:{details_port}/details/7", headers=garbage, timeout=10
    ).json()
    mine, leaf = body["mine"], body["ratings"]["headers"]
    assert (
        mine["x-request-id"] and leaf["x-request-id"] == mine["x-request-id"]
    )  # generated, passed on
    assert leaf["traceparent"].split("-")[1] != "zz"
    assert len(leaf["traceparent"].split("-")[1]) == 32
    assert leaf["baggage"] == ""  # malformed baggage is dropped, not forwarded


async def _collect(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_websocket_and_lifespan_pass_through_untouched(make_mesh: Callable[..., Mesh]) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))
        assert current_request() is None  # no request context outside HTTP

    mesh = make_mesh("reviews", "v1")
    middleware = MeshMiddleware(inner, mesh=mesh)
    for kind in ("websocket", "lifespan"):
        scope = {"type": kind, "headers": [(b"traceparent", b"garbage")]}
        asyncio.run(_collect(middleware, scope))
        assert seen[-1][0] is scope and scope == {
            "type": kind,
            "headers": [(b"traceparent", b"garbage")],
        }
    assert mesh.inflight == 0


def test_streaming_response_is_not_buffered(
    make_mesh: Callable[..., Mesh], exits: ExitStack
) -> None:
    release = threading.Event()

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            yield b"first\n"
            while not release.is_set():  # waits for the client to have seen the first chunk
                await asyncio.sleep(0.01)
            yield b"second\n"

        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/stream", stream)])
    app.add_middleware(MeshMiddleware, mesh=make_mesh("reviews", "v1"))
    url = exits.enter_context(serve_asgi(app))
    with httpx.stream("GET", f"{url}/stream", timeout=10) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"first\n"  # arrived while the app was still producing
        release.set()
        assert b"".join(chunks) == b"second\n"


def test_wsgi_iterable_is_closed_and_context_set_while_iterating(
    make_mesh: Callable[..., Mesh],
) -> None:
    closed: list[bool] = []
    seen: list[str] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            context = current_request()
            seen.append(context.request_id if context else "")
            yield b"ok"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    mesh = make_mesh("ratings", "v1")
    middleware = MeshWSGIMiddleware(app, mesh=mesh)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_REQUEST_ID": "r-1"}
    result = middleware(environ, lambda status, headers, exc_info=None: None)
    assert mesh.inflight == 1
    assert b"".join(result) == b"ok"
    result.close()  # type: ignore[attr-defined]
    assert closed == [True] and seen == ["r-1"]
    assert mesh.inflight == 0
    assert current_request() is None


def test_admin_app(
    make_mesh: Callable[..., Mesh], exits: ExitStack, apply_yaml: Callable[[str], int]
) -> None:
    mesh = make_mesh("reviews", "v1").start()
    apply_yaml(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n"
    )
    url = exits.enter_context(serve_asgi(mesh.admin_app))
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{url}/healthz").status_code == 200
        assert client.get(f"{url}/readyz").status_code == 200
        assert wait_until(lambda: client.get(f"{url}/config_dump").json()["config"]["version"] == 1)
        dump = client.get(f"{url}/config_dump").json()
        assert (
            dump["service"] == "reviews"
            and dump["config"]["resources"][0]["kind"] == "PeerAuthentication"
        )
        mesh.drain(timeout=1)
        assert client.get(f"{url}/readyz").status_code == 503
