"""Client behaviour with in-process upstreams: passthrough, ServiceEntry, timeouts, sync = async."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshware import Mesh, UpstreamTimeoutError
from tests.servers import free_port, serve_asgi
from tests.transport.conftest import wait_for_endpoints, wait_for_version


def _app(name: str, *, delay: float = 0.0) -> Starlette:
    async def handle(request: Request) -> PlainTextResponse:
        if delay:
            await asyncio.sleep(delay)
        return PlainTextResponse(name, headers={"x-upstream": name})

    return Starlette(routes=[Route("/{path:path}", handle)])


@pytest.fixture
def exits() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _join(
    make_mesh: Callable[..., Mesh], exits: ExitStack, service: str, version: str, **app: float
) -> str:
    """Serve an app on a fresh port and register it in the mesh as (service, version)."""
    port = free_port()
    mesh = make_mesh(service, version, address=f"127.0.0.1:{port}")
    url = exits.enter_context(serve_asgi(_app(f"{service}-{version}", **app), port=port))
    mesh.start()
    return url


def test_hosts_outside_the_mesh_pass_through(caller: Mesh, exits: ExitStack) -> None:
    url = exits.enter_context(serve_asgi(_app("plain")))
    with caller.client(timeout=5) as client:
        assert client.get(f"{url}/x").text == "plain"


SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: PORT}}
"""


def test_service_entry_static_endpoints(
    caller: Mesh, exits: ExitStack, apply_yaml: Callable[[str], int]
) -> None:
    port = free_port()
    exits.enter_context(serve_asgi(_app("legacy"), port=port))
    wait_for_version(caller, apply_yaml(SERVICE_ENTRY.replace("PORT", str(port))))
    with caller.client(timeout=5) as client:
        assert client.get("http://legacy.internal/status").text == "legacy"


TIMEOUT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http:
  - route: [{destination: {host: slow}}]
    timeout: 300ms
"""


def test_route_timeout_raises_an_httpx_timeout(
    caller: Mesh, exits: ExitStack, apply_yaml: Callable[[str], int], make_mesh: Callable[..., Mesh]
) -> None:
    _join(make_mesh, exits, "slow", "v1", delay=5.0)
    wait_for_version(caller, apply_yaml(TIMEOUT))
    wait_for_endpoints(caller, "slow", 1)
    with caller.client() as client, pytest.raises(UpstreamTimeoutError) as info:
        client.get("http://slow/")
    assert isinstance(info.value, httpx.TimeoutException)
    # the attempt's own timeout is the cause, in the compiled build as in the Python one
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


WEIGHTS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 30}
    - {destination: {host: reviews, subset: v3}, weight: 20}
"""


def test_sync_and_async_clients_make_the_same_decisions(
    caller: Mesh, exits: ExitStack, apply_yaml: Callable[[str], int], make_mesh: Callable[..., Mesh]
) -> None:
    for version in ("v1", "v2", "v3"):
        _join(make_mesh, exits, "reviews", version)
    wait_for_version(caller, apply_yaml(WEIGHTS))
    wait_for_endpoints(caller, "reviews", 3)

    with httpx.Client(transport=caller.transport(rng=random.Random(7))) as client:
        sync_seen = [client.get("http://reviews/").text for _ in range(300)]

    async def drive() -> list[str]:
        async with httpx.AsyncClient(
            transport=caller.async_transport(rng=random.Random(7))
        ) as client:
            return [(await client.get("http://reviews/")).text for _ in range(300)]

    async_seen = asyncio.run(drive())
    assert sync_seen == async_seen
    assert set(sync_seen) == {"reviews-v1", "reviews-v2", "reviews-v3"}
