"""``meshware serve`` runs ASGI and WSGI apps as mesh services and drains them on SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from click.testing import Result

from meshware.embedded_redis import free_port
from tests.helpers import ROOT, wait_until


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("target", "kind"),
    [("tests.apps.asgi_hello:app", "asgi"), ("tests.apps.wsgi_hello:app", "wsgi")],
)
def test_serve_joins_the_mesh_and_drains_on_sigterm(
    target: str, kind: str, redis_url: str, meshctl: Callable[..., Result], tmp_path: object
) -> None:
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "MESHWARE_STATE_DIR": str(tmp_path),
        "MESHWARE_HEARTBEAT_INTERVAL": "0.2",
        "MESHWARE_INSTANCE_TTL": "2",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshware",
            "--redis-url",
            redis_url,
            "serve",
            target,
            "--service",
            "hello",
            "--version",
            "v2",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{port}/"), timeout=30), (
            "server did not start"
        )
        body = httpx.get(
            f"http://127.0.0.1:{port}/",
            headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
        ).json()
        assert body["app"] == kind and body["trace"] == "ab" * 16
        assert httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200

        def registered() -> list[dict[str, object]]:
            return [
                r
                for r in json.loads(meshctl("status", "-o", "json").output)
                if r["service"] == "hello"
            ]

        assert wait_until(lambda: len(registered()) == 1)
        (row,) = registered()
        assert row["version"] == "v2" and row["address"] == f"127.0.0.1:{port}"

        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert registered() == []  # deregistered, not left to expire
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_serve_with_two_workers_registers_two_instances(
    redis_url: str, meshctl: Callable[..., Result], tmp_path: object
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MESHWARE_STATE_DIR": str(tmp_path),
        "MESHWARE_HEARTBEAT_INTERVAL": "0.2",
        "MESHWARE_INSTANCE_TTL": "2",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshware",
            "--redis-url",
            redis_url,
            "serve",
            "tests.apps.asgi_hello:app",
            "--service",
            "hello",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def instances() -> list[dict[str, object]]:
        return [
            r for r in json.loads(meshctl("status", "-o", "json").output) if r["service"] == "hello"
        ]

    try:
        assert wait_until(lambda: len(instances()) == 2, timeout=30)
        assert {r["address"] for r in instances()} == {f"127.0.0.1:{port}"}
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["app"] == "asgi"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert instances() == []
    finally:
        proc.kill()
        proc.wait(timeout=10)
