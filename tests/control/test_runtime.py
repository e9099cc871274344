"""Instance runtime against real Redis servers: sync, ACK/NACK, outages, restarts, disk LKG."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from meshware import ConfigError, Mesh
from meshware.config import channel
from meshware.config.model.networking import VirtualService
from meshware.config.parse import load_files
from meshware.config.store import ConfigStore
from meshware.embedded_redis import RedisServer
from tests.helpers import BOOKINFO, wait_until
from tests.servers import serve_asgi

DESTINATION_RULES = BOOKINFO / "destination-rule-all.yaml"
REVIEWS_90_10 = BOOKINFO / "virtual-service-reviews-90-10.yaml"
REVIEWS_JASON = BOOKINFO / "virtual-service-reviews-jason-v2-v3.yaml"

MeshFactory = Callable[..., Mesh]
Meshctl = Callable[..., Result]


def apply(url: str, *files: Path) -> int:
    store = ConfigStore.from_url(url)
    try:
        result = store.apply(load_files(files))
        assert result.record is not None
        return result.record.version
    finally:
        store.close()


def all_at(meshes: list[Mesh], version: int, epoch: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            m.snapshot.version == version and (epoch is None or m.snapshot.epoch == epoch)
            for m in meshes
        )

    return check


def status_json(meshctl: Meshctl) -> list[dict[str, object]]:
    result = meshctl("status", "-o", "json")
    assert result.exit_code == 0, result.output
    data: list[dict[str, object]] = json.loads(result.output)
    return data


def test_instances_register_sync_and_report(
    make_mesh: MeshFactory, redis_url: str, meshctl: Meshctl
) -> None:
    meshes = [
        make_mesh("reviews", v, address=f"127.0.0.1:90{i}0")
        for i, v in enumerate(("v1", "v2", "v3"))
    ]
    for m in meshes:
        m.start()
    assert all(m.ready for m in meshes)
    version = apply(redis_url, DESTINATION_RULES, REVIEWS_90_10)
    assert wait_until(all_at(meshes, version))
    assert wait_until(
        lambda: all(
            s["state"] == "SYNCED" and s["config_version"] == version for s in status_json(meshctl)
        )
    )
    rows = status_json(meshctl)
    assert {r["version"] for r in rows} == {"v1", "v2", "v3"}
    assert {r["instance"] for r in rows} == {m.instance_id for m in meshes}
    for row in rows:
        assert {
            "service",
            "version",
            "instance",
            "address",
            "config_version",
            "state",
        } <= row.keys()
        assert row["labels"] == {"app": "reviews", "version": row["version"]}
    assert "SYNCED" in meshctl("status").output
    assert meshctl("status", "--wait-synced", "5").exit_code == 0

    vs = meshes[0].config.of(type(meshes[0].config.resources[-1]))
    assert vs  # the snapshot holds typed resources
    meshes[0].stop()
    assert wait_until(lambda: len(status_json(meshctl)) == 2)  # deregistered on stop


def test_crashed_instance_expires(redis_url: str, meshctl: Meshctl, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from meshware import Mesh
        mesh = Mesh("ratings", "v1", redis_url={redis_url!r}, state_dir={str(tmp_path)!r},
                    heartbeat_interval=0.2, instance_ttl=1.0).start()
        print(mesh.instance_id, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        instance = proc.stdout.readline().strip()
        assert wait_until(lambda: any(r["instance"] == instance for r in status_json(meshctl)))
        proc.send_signal(signal.SIGKILL)  # no chance to deregister
        proc.wait(timeout=10)
        assert wait_until(
            lambda: not any(r["instance"] == instance for r in status_json(meshctl)), timeout=10
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _config_app(mesh: Mesh) -> Starlette:
    """A real app whose answer depends on the mesh config it holds."""

    async def routes(request: Request) -> JSONResponse:
        snapshot = mesh.snapshot
        weights = {
            vs.metadata.name: [d.weight for d in vs.spec.http[-1].route]
            for vs in snapshot.config.of(VirtualService)
        }
        return JSONResponse({"version": snapshot.version, "weights": weights})

    return Starlette(routes=[Route("/routes", routes)], lifespan=mesh.lifespan)


def test_redis_outage_keeps_snapshot_and_catches_up(make_mesh: MeshFactory, tmp_path: Path) -> None:
    server = RedisServer(directory=tmp_path / "persistent", persistence=True).start()
    try:
        meshes = [make_mesh("reviews", v, redis_url=server.url) for v in ("v1", "v2", "v3")]
        with ExitStack() as stack:
            urls = [stack.enter_context(serve_asgi(_config_app(m))) for m in meshes]
            v1 = apply(server.url, DESTINATION_RULES, REVIEWS_90_10)
            assert wait_until(all_at(meshes, v1))
            epoch = meshes[0].snapshot.epoch

            server.stop()
            assert wait_until(lambda: not any(m.connected for m in meshes))
            with httpx.Client(timeout=5) as client:
                for _ in range(20):  # the apps keep answering from the held snapshot
                    for url in urls:
                        body = client.get(f"{url}/routes").json()
                        assert body == {"version": v1, "weights": {"reviews": [90, 10]}}
            for m in meshes:
                assert len(m.config) == 5
                assert m.ready

            server.start()  # same data (AOF), same epoch
            v2 = apply(server.url, REVIEWS_JASON)
            assert v2 == v1 + 1
            assert wait_until(all_at(meshes, v2, epoch), timeout=15)
            with httpx.Client(timeout=5) as client:
                for url in urls:
                    assert client.get(f"{url}/routes").json()["version"] == v2
    finally:
        server.close()


def test_update_published_while_disconnected_is_not_lost(
    make_mesh: MeshFactory, redis_url: str
) -> None:
    meshes = [make_mesh("reviews", v, resync_interval=60.0).start() for v in ("v1", "v2")]
    v1 = apply(redis_url, DESTINATION_RULES)
    assert wait_until(all_at(meshes, v1))
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # events published now are lost
    v2 = apply(redis_url, REVIEWS_90_10)
    # resync_interval is 60 s, so only the resync on reconnect can deliver v2 in time
    assert wait_until(all_at(meshes, v2), timeout=15)


def test_instance_started_while_redis_is_down_uses_disk_copy(
    make_mesh: MeshFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    state = tmp_path / "shared-state"
    first = make_mesh("reviews", "v1", state_dir=state).start()
    version = apply(redis_server.url, DESTINATION_RULES, REVIEWS_90_10)
    assert wait_until(all_at([first], version))
    lkg_files = list(state.rglob("*.json"))
    assert wait_until(lambda: bool(list(state.rglob("*.json"))))
    first.stop()
    redis_server.stop()

    second = make_mesh("reviews", "v1", state_dir=state).start(wait=0.3)
    assert second.snapshot.source == "disk"
    assert second.snapshot.version == version
    assert second.ready and not second.connected
    assert len(second.config) == 5
    del lkg_files

    redis_server.start()  # comes back empty: the disk copy keeps serving until an apply
    assert wait_until(lambda: second.connected, timeout=15)
    assert second.snapshot.version == version
    v_new = apply(redis_server.url, DESTINATION_RULES)
    assert wait_until(
        lambda: (
            second.snapshot.source == "redis"
            and second.snapshot.version == v_new
            and len(second.config) == 4
        )
    )


def test_a_stop_before_the_save_was_scheduled_still_writes_the_disk_copy(
    make_mesh: MeshFactory, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a stop cancels the ACK's report before it scheduled the save:
    monkeypatch.setattr(channel.RedisConfigChannel, "_schedule_save", lambda self: None)
    state = tmp_path / "state"
    mesh = make_mesh("reviews", "v1", state_dir=state).start()
    version = apply(redis_url, DESTINATION_RULES)
    assert wait_until(all_at([mesh], version))
    assert not list(state.rglob("*.json"))
    mesh.stop()
    (saved,) = state.rglob("*.json")
    assert json.loads(saved.read_text())["record"]["version"] == str(version)


def test_redis_restarted_empty_then_reapplied_converges(
    make_mesh: MeshFactory, redis_server: RedisServer, meshctl: Meshctl
) -> None:
    meshes = [make_mesh("reviews", v).start() for v in ("v1", "v2", "v3")]
    apply(redis_server.url, DESTINATION_RULES)
    apply(redis_server.url, REVIEWS_90_10)
    v3 = apply(redis_server.url, REVIEWS_JASON)
    assert v3 == 3
    assert wait_until(all_at(meshes, 3))
    old_epoch = meshes[0].snapshot.epoch

    redis_server.restart()  # empty: numbering starts over under a new epoch
    assert wait_until(lambda: len(status_json(meshctl)) == 3, timeout=15)  # re-registered
    assert all(r["state"] == "STALE" for r in status_json(meshctl))
    v1 = apply(redis_server.url, DESTINATION_RULES, REVIEWS_90_10)
    assert v1 == 1  # lower than what the instances hold ...
    assert wait_until(
        lambda: all(m.snapshot.version == 1 and m.snapshot.epoch != old_epoch for m in meshes)
    )
    # ... and the route really changed back to 90/10
    for m in meshes:
        routes = [d for d in m.snapshot.documents if d["kind"] == "VirtualService"]
        assert [r["weight"] for r in routes[0]["spec"]["http"][0]["route"]] == [90, 10]
    assert wait_until(lambda: all(r["state"] == "SYNCED" for r in status_json(meshctl)))


def _write_bad_version(url: str, documents: object) -> int:
    """Bypass ``apply``: write a new current version straight into Redis and announce it."""
    client = redis.Redis.from_url(url, decode_responses=True)
    current = client.hgetall("meshware:default:config")
    version = int(current["version"]) + 1
    client.hset(
        "meshware:default:config",
        mapping={
            "version": str(version),
            "documents": documents if isinstance(documents, str) else json.dumps(documents),
            "digest": "tampered",
        },
    )
    client.publish(
        "meshware:default:config-events",
        json.dumps({"epoch": current["epoch"], "version": version}),
    )
    return version


@pytest.mark.parametrize("kind", ["invalid-weight", "not-json"])
def test_malformed_version_in_redis_is_nacked(
    make_mesh: MeshFactory, redis_url: str, meshctl: Meshctl, kind: str
) -> None:
    meshes = [make_mesh("reviews", v).start() for v in ("v1", "v2", "v3")]
    good = apply(redis_url, DESTINATION_RULES, REVIEWS_90_10)
    assert wait_until(all_at(meshes, good))
    docs = json.loads(
        redis.Redis.from_url(redis_url, decode_responses=True).hget(
            "meshware:default:config", "documents"
        )
    )
    if kind == "invalid-weight":
        for doc in docs:
            if doc["kind"] == "VirtualService":
                doc["spec"]["http"][0]["route"][0]["weight"] = 250
        bad = _write_bad_version(redis_url, docs)
        expected_reason = "weight"
    else:
        bad = _write_bad_version(redis_url, "{not json")
        expected_reason = "invalid JSON"

    def all_nacked() -> bool:
        rows = status_json(meshctl)
        return len(rows) == 3 and all(r["state"] == "NACK" for r in rows)

    assert wait_until(all_nacked)
    for m in meshes:
        assert m.snapshot.version == good  # the last good version keeps serving
        assert m.watcher.nack is not None and m.watcher.nack.version == bad
    for row in status_json(meshctl):
        assert expected_reason in str(row["reason"])
    table = meshctl("status").output
    assert "NACK" in table and expected_reason in table
    assert meshctl("status", "--wait-synced", "0.5").exit_code == 1

    if kind == "not-json":  # nothing can be merged into an unreadable version ...
        refused = meshctl("apply", "-f", str(REVIEWS_JASON))
        assert refused.exit_code == 2 and "meshware rollback" in refused.output
    healed = meshctl("rollback")  # ... but a rollback restores the last good one
    assert healed.exit_code == 0, healed.output
    assert wait_until(all_at(meshes, bad + 1))
    assert all(m.snapshot.digest == meshes[0].snapshot.digest for m in meshes)
    assert wait_until(lambda: all(r["state"] == "SYNCED" for r in status_json(meshctl)))


def test_local_config_file_is_watched(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(DESTINATION_RULES.read_text())
    mesh = Mesh("reviews", "v1", config_file=routes)
    with mesh:
        assert mesh.snapshot.source == "file"
        assert len(mesh.config) == 4
        routes.write_text(DESTINATION_RULES.read_text() + "\n---\n" + REVIEWS_90_10.read_text())
        os.utime(routes, ns=(1, 1))  # a distinct mtime even on coarse clocks
        assert wait_until(lambda: len(mesh.config) == 5)
        routes.write_text(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [x], bogus: 1}\n"
        )
        os.utime(routes, ns=(2, 2))
        assert wait_until(lambda: mesh.watcher.nack is not None)
        assert len(mesh.config) == 5  # the bad edit is rejected, the last good one stays
        assert "spec.bogus" in mesh.watcher.nack.reason  # type: ignore[union-attr]


def test_from_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> None:
    env = {
        "MESHWARE_SERVICE": "ratings",
        "MESHWARE_VERSION": "v2",
        "MESHWARE_REDIS_URL": redis_url,
        "MESHWARE_ADDRESS": "127.0.0.1:9080",
        "MESHWARE_LABELS": "track=canary, team=books",
        "MESHWARE_MESH": "blue",
        "MESHWARE_STATE_DIR": str(tmp_path),
    }
    mesh = Mesh.from_env(env)
    assert mesh.service == "ratings" and mesh.version == "v2"
    assert mesh.labels == {"app": "ratings", "version": "v2", "track": "canary", "team": "books"}
    assert mesh.settings.mesh == "blue" and mesh.settings.address == "127.0.0.1:9080"
    with pytest.raises(ConfigError) as info:
        Mesh.from_env(
            {
                "MESHWARE_SERVICE": "Bad_Name",
                "MESHWARE_REDIS_URL": "http://x",
                "MESHWARE_ADDRESS": "nope",
            }
        )
    text = str(info.value)
    assert "service" in text and "redis_url" in text and "address" in text
    with pytest.raises(ConfigError, match="MESHWARE_SERVICE"):
        Mesh.from_env({})


def test_lifespan_starts_and_stops_the_mesh(
    redis_url: str, tmp_path: Path, meshctl: Meshctl
) -> None:
    mesh = Mesh(
        "productpage",
        "v1",
        redis_url=redis_url,
        state_dir=tmp_path,
        heartbeat_interval=0.2,
        instance_ttl=2,
    )

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"config v{mesh.snapshot.version}")

    app = Starlette(routes=[Route("/", home)], lifespan=mesh.lifespan)
    apply(redis_url, DESTINATION_RULES)
    with serve_asgi(app) as url, httpx.Client(timeout=5) as client:
        assert mesh.running
        assert wait_until(lambda: client.get(f"{url}/").text == "config v1")
        assert [r["service"] for r in status_json(meshctl)] == ["productpage"]
    assert not mesh.running
    assert status_json(meshctl) == []
