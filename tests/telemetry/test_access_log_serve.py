"""Access logs end to end: ``meshware serve`` processes (ASGI and Flask), off until a
``Telemetry`` resource applied through Redis turns them on, inbound lines on the callee,
outbound lines on the caller, a CEL filter narrowing them live."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshware.demo.services import Service
from tests.helpers import wait_until
from tests.telemetry.test_metrics_serve import APP, WSGI, load

MESH_WIDE = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
"""

ERRORS_ONLY_ON_BACKEND = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: backend-errors}
spec:
  selector: {matchLabels: {app: backend}}
  accessLogging:
  - match: {mode: SERVER}
    filter: {expression: "response.code >= 500 && request.url_path.startsWith('/status/')"}
"""


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start(
    serve: Callable[..., list[Service]], tmp_path: Path, backend_app: str
) -> tuple[Service, Path, Path]:
    backend_log, frontend_log = tmp_path / "backend.log", tmp_path / "frontend.log"
    serve(Service("backend", "v1", app=backend_app), env={"MESHWARE_ACCESS_LOG": str(backend_log)})
    (frontend,) = serve(
        Service("frontend", "v1", app=APP), env={"MESHWARE_ACCESS_LOG": str(frontend_log)}
    )
    assert wait_until(lambda: load(frontend, "backend", "/status/200", 1) == [200], timeout=30)
    return frontend, backend_log, frontend_log


@pytest.mark.parametrize("backend_app", [APP, WSGI], ids=["asgi", "wsgi"])
def test_access_logs_follow_the_telemetry_resource(
    serve: Callable[..., list[Service]],
    apply_yaml: Callable[[str], int],
    tmp_path: Path,
    backend_app: str,
) -> None:
    frontend, backend_log, frontend_log = start(serve, tmp_path, backend_app)
    assert load(frontend, "backend", "/status/200", 3) == [200] * 3
    # off by default, as in Istio (a flush happens every second: wait for two)
    assert not wait_until(lambda: lines(backend_log) or lines(frontend_log), timeout=2.5)

    apply_yaml(MESH_WIDE)

    def logged() -> bool:
        load(frontend, "backend", "/status/503?x=1", 1)
        return any(e["response_code"] == 503 for e in lines(backend_log)) and any(
            e["response_code"] == 503 and e["direction"] == "outbound" for e in lines(frontend_log)
        )

    assert wait_until(logged, timeout=15)
    inbound = [e for e in lines(backend_log) if e["direction"] == "inbound"]
    entry = next(e for e in inbound if e["response_code"] == 503)
    assert entry["method"] == "GET" and entry["path"] == "/status/503?x=1"
    assert entry["protocol"] == "HTTP/1.1"
    assert entry["bytes_sent"] == 10 and entry["response_flags"] == "-"
    assert entry["upstream_cluster"].startswith("inbound|") and entry["route_name"] == "default"
    assert len(entry["trace_id"]) == 32 and entry["request_id"]
    assert entry["start_time"].endswith("Z") and isinstance(entry["duration"], int)
    assert entry["source_principal"] is None  # plaintext: no verified caller

    outbound = [e for e in lines(frontend_log) if e["direction"] == "outbound"]
    call = next(e for e in outbound if e["response_code"] == 503)
    assert call["upstream_cluster"].endswith("||backend.default.svc.cluster.local")
    assert call["upstream_cluster"].startswith("outbound|")
    assert call["upstream_host"].startswith("127.0.0.1:")
    assert call["path"] == "/status/503?x=1" and call["bytes_sent"] == 10
    assert call["trace_id"] == entry["trace_id"] or any(
        e["trace_id"] == call["trace_id"] for e in inbound
    )  # the caller's line and the callee's share the trace
    # the frontend's own inbound requests are logged too (its /load endpoint); its line is
    # written when that request ends, after the outbound one, and flushed up to a second later
    assert wait_until(
        lambda: any(
            e["direction"] == "inbound" and e["path"].startswith("/load")
            for e in lines(frontend_log)
        ),
        timeout=10,
    )

    # a workload-level resource wins for backend: server side, 5xx under /status/ only
    apply_yaml(ERRORS_ONLY_ON_BACKEND)

    def filtered() -> bool:
        before = len(lines(backend_log))
        load(frontend, "backend", "/status/200", 1)
        load(frontend, "backend", "/status/500", 1)
        new = lines(backend_log)[before:]
        return bool(new) and all(e["response_code"] >= 500 for e in new)

    assert wait_until(filtered, timeout=15)
    # a marker error: once its line is there, every earlier line was flushed too
    assert load(frontend, "backend", "/status/502", 1) == [502]
    assert wait_until(lambda: lines(backend_log)[-1]["response_code"] == 502, timeout=5)
    count = len(lines(backend_log))
    assert load(frontend, "backend", "/status/200", 5) == [200] * 5
    assert load(frontend, "backend", "/status/404", 1) == [404]
    assert not wait_until(lambda: len(lines(backend_log)) > count, timeout=2.5)
