"""Fixtures for outbound tests: real upstream processes joined to the mesh, a calling mesh."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshware import Mesh
from meshware.embedded_redis import free_port
from tests.helpers import ROOT, wait_until


@dataclass
class Upstream:
    service: str
    version: str
    port: int
    log: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        ok = wait_until(self._answers, timeout=20, interval=0.05)
        assert ok, f"upstream {self.service} {self.version} did not start on {self.port}"
        self.log.write_text("")  # forget the readiness probe
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"http://{self.address}/ready", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def upstreams(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """Start real upstream processes (uvicorn + Mesh) on 127.0.0.1; all killed at teardown."""
    started: list[Upstream] = []

    def start(
        service: str, version: str, *, delay: float = 0.0, port: int | None = None
    ) -> Upstream:
        port = port or free_port()
        log = tmp_path / f"{service}-{version}-{port}.log"
        args = [
            sys.executable,
            "-m",
            "tests.upstream_app",
            "--service",
            service,
            "--version",
            version,
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            "--state-dir",
            str(tmp_path / "state"),
            "--log",
            str(log),
            "--delay",
            str(delay),
        ]
        upstream = Upstream(service, version, port, log, args).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.kill()


@pytest.fixture
def caller(make_mesh: Callable[..., Mesh]) -> Mesh:
    """The calling service (productpage), with fast endpoint discovery."""
    return make_mesh("productpage", "v1", discovery_interval=0.2).start()


def wait_for_endpoints(mesh: Mesh, host: str, count: int, timeout: float = 15.0) -> None:
    canonical = f"{host}.default.svc.cluster.local"
    assert wait_until(
        lambda: len(mesh.endpoint_table.endpoints(canonical)) == count, timeout=timeout
    ), f"{host}: {len(mesh.endpoint_table.endpoints(canonical))} endpoints, wanted {count}"


def wait_for_version(mesh: Mesh, version: int, timeout: float = 10.0) -> None:
    assert wait_until(lambda: mesh.snapshot.version >= version, timeout=timeout)


def binomial_interval(p: float, n: int, z: float = 3.29) -> tuple[float, float]:
    """The 99.9% normal-approximation interval for a proportion ``p`` over ``n`` trials."""
    half = z * (p * (1 - p) / n) ** 0.5
    return p - half, p + half


class GetLoad:
    """GET ``url`` in a loop from several threads sharing one client, counting what fails."""

    def __init__(self, client: httpx.Client, url: str, threads: int = 4) -> None:
        self.client = client
        self.url = url
        self.errors: list[BaseException] = []
        self.done = 0
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.client.get(self.url)
                if response.status_code != 200:
                    self.errors.append(AssertionError(f"status {response.status_code}"))
            except httpx.HTTPError as exc:
                self.errors.append(exc)
            self.done += 1

    def __enter__(self) -> GetLoad:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=20)
