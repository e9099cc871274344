"""AuthorizationPolicy enforced by the middleware: 403 ``RBAC: access denied``, 400 for
malformed paths, the application routing the normalised path; ASGI and WSGI alike. The
requests are handed to the middleware as a server would (raw targets, no client-side path
clean-up), so encoding tricks arrive exactly as an attacker sends them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshware import Mesh, MeshMiddleware, MeshWSGIMiddleware

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: teams, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - when: [{key: "request.headers[x-team]", values: [blue]}]
"""

BYPASSES = [
    "/admin",
    "//admin",
    "/./admin",
    "/foo/../admin",
    "/%61dmin",
    "/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/admin%2Fsecret",
    "/%2Fadmin",
    "/%5Cadmin",
    "/a/b/../../admin/x",
    "/admin/",
]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    config = tmp_path / "mesh.yaml"
    config.write_text(POLICIES)
    mesh = Mesh("ratings", config_file=config).start()
    try:
        assert not mesh.authorizer.empty
        yield mesh
    finally:
        mesh.stop()


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = f"{scope['path']}|{scope['raw_path'].decode()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def asgi(mesh: Mesh, target: str, **headers: str) -> tuple[int, bytes]:
    middleware = MeshMiddleware(_echo, mesh=mesh)
    path = target.partition("?")[0]
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "scheme": "http",
        "server": ("127.0.0.1", 9080),
        "headers": [(b"host", b"ratings:9080")]
        + [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def wsgi(mesh: Mesh, target: str, **headers: str) -> tuple[int, bytes]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode("latin-1")]

    middleware = MeshWSGIMiddleware(app, mesh=mesh)
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/decoded-by-the-server",
        "RAW_URI": target,
        "SERVER_PORT": "9080",
        "HTTP_HOST": "ratings:9080",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> None:
        status.append(line)

    result = middleware(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return int(status[0][:3]), body


@pytest.mark.parametrize("call", [asgi, wsgi], ids=["asgi", "wsgi"])
@pytest.mark.parametrize("target", BYPASSES)
def test_encoding_tricks_do_not_bypass_a_deny(call: Any, mesh: Mesh, target: str) -> None:
    assert call(mesh, target, **{"x-team": "blue"}) == (403, b"RBAC: access denied")


@pytest.mark.parametrize("call", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_allowed_requests_reach_the_app_with_the_normalised_path(call: Any, mesh: Mesh) -> None:
    status, body = call(mesh, "/ratings//7/./stars?x=1", **{"x-team": "blue"})
    assert status == 200
    assert body.split(b"|")[0] == b"/ratings/7/stars"


@pytest.mark.parametrize("call", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_allow_policy_and_malformed_paths(call: Any, mesh: Mesh) -> None:
    assert call(mesh, "/ratings/7") == (403, b"RBAC: access denied")  # no x-team: no ALLOW
    assert call(mesh, "/ratings/7", **{"x-team": "red"})[0] == 403
    assert call(mesh, "/ratings/%00", **{"x-team": "blue"}) == (400, b"Bad Request")


def test_without_policies_nothing_is_checked(tmp_path: Path) -> None:
    mesh = Mesh("ratings").start()
    try:
        assert mesh.authorizer.empty
        assert asgi(mesh, "/admin")[0] == 200
    finally:
        mesh.stop()
