"""Shared fixtures: real Redis servers, mesh instances with fast timers, a CLI runner."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from meshware import Mesh
from meshware.cli.main import cli
from meshware.config.parse import load_yaml
from meshware.config.store import ConfigStore
from meshware.demo.services import Service, ServiceGroup, assign_ports
from meshware.embedded_redis import RedisServer
from tests.helpers import ROOT


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server on 127.0.0.1 (no persistence) for one test."""
    server = RedisServer(directory=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def make_mesh(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Mesh]]:
    """Build mesh instances with fast timers; every one is stopped at teardown."""
    made: list[Mesh] = []

    def factory(service: str = "reviews", version: str = "v1", **kwargs: Any) -> Mesh:
        kwargs.setdefault("redis_url", redis_url)
        kwargs.setdefault("state_dir", tmp_path / "state" / f"{service}-{version}-{len(made)}")
        kwargs.setdefault("heartbeat_interval", 0.2)
        kwargs.setdefault("instance_ttl", 2.0)
        kwargs.setdefault("resync_interval", 0.5)
        mesh = Mesh(service, version, **kwargs)
        made.append(mesh)
        return mesh

    yield factory
    for mesh in made:
        mesh.stop()


@pytest.fixture
def meshctl(redis_url: str) -> Callable[..., Result]:
    """Run the ``meshware`` CLI in-process against the test Redis."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(
            cli,
            ["--redis-url", redis_url, *args],
            input=input,
            catch_exceptions=False,
            env={"COLUMNS": "250"},
        )

    return run


@pytest.fixture
def apply_yaml(redis_url: str) -> Callable[[str], int]:
    def apply(text: str) -> int:
        store = ConfigStore.from_url(redis_url)
        try:
            result = store.apply(load_yaml(text, "test.yaml"))
            current = store.head()
            assert current is not None
            return current.version if result.record is None else result.record.version
        finally:
            store.close()

    return apply


@pytest.fixture
def serve(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., list[Service]]]:
    """Run services as ``meshware serve`` processes on free ports, with fast mesh timers;
    returns them with their ports once all listen. Every one is stopped at teardown."""
    groups: list[ServiceGroup] = []

    def start(*services: Service, env: Mapping[str, str] | None = None) -> list[Service]:
        placed = assign_ports(services, 0)
        group = ServiceGroup(
            placed,
            redis_url=redis_url,
            mesh="default",
            root=ROOT,
            log_dir=tmp_path / "logs",
            env={
                "MESHWARE_STATE_DIR": str(tmp_path / "state"),
                "MESHWARE_HEARTBEAT_INTERVAL": "0.2",
                "MESHWARE_INSTANCE_TTL": "2",
                **(env or {}),
            },
        )
        groups.append(group)
        group.start()
        group.wait_listening(60)
        return placed

    yield start
    for group in groups:
        group.stop()
