"""``meshware demo``: a live, self-contained tour of the control plane.

It needs nothing but the install: without an explicit Redis it starts an embedded real
``redis-server``, joins in-process mesh instances for Bookinfo's services, and walks through
applies, ACKs, a NACKed tampered version and a rollback, then cleans up after itself.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import redis
from rich.table import Table

from meshware.cli.context import CliContext, out, pass_ctx, report_errors
from meshware.cli.status_cmd import render_status
from meshware.config.connection import redact
from meshware.config.model.networking import VirtualService
from meshware.config.parse import load_files
from meshware.config.record import canonical_json
from meshware.config.registry import list_instances
from meshware.config.store import ConfigStore
from meshware.embedded_redis import RedisServer
from meshware.errors import MeshwareError
from meshware.mesh import Mesh

MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "bookinfo" / "manifests"
DEMO_MESH = "demo"
INSTANCES = (
    ("productpage", "v1", 9080),
    ("details", "v1", 9081),
    ("reviews", "v1", 9082),
    ("reviews", "v2", 9083),
    ("reviews", "v3", 9084),
    ("ratings", "v1", 9085),
)
STEPS = (
    (
        "destination-rule-all.yaml",
        "DestinationRules: subsets v1, v2, v3 for every Bookinfo service",
    ),
    ("virtual-service-reviews-90-10.yaml", "canary: 90% of reviews traffic to v1, 10% to v2"),
    ("virtual-service-reviews-50-v3.yaml", "shift: 50% to v1, 50% to v3"),
    ("virtual-service-reviews-jason-v2-v3.yaml", "A/B: user 'jason' to v2, everyone else to v3"),
)


@contextlib.contextmanager
def _redis(ctx: click.Context, state: CliContext) -> Iterator[str]:
    source = ctx.find_root().get_parameter_source("redis_url")
    if source not in (click.core.ParameterSource.DEFAULT, None):
        out.print(f"Redis: {redact(state.redis_url)} (mesh '{DEMO_MESH}')", highlight=False)
        yield state.redis_url
        return
    with RedisServer() as server:
        out.print(
            f"Redis: embedded redis-server on 127.0.0.1:{server.port} (set MESHWARE_REDIS_URL to use yours)",
            highlight=False,
        )
        yield server.url


def _routes(mesh: Mesh) -> str:
    for vs in mesh.config.of(VirtualService):
        if vs.metadata.name != "reviews":
            continue
        parts = []
        for rule in vs.spec.http:
            total = sum(d.weight for d in rule.route) or 1
            targets = ", ".join(
                f"{d.destination.subset} {100 * d.weight / total:.0f}%" for d in rule.route
            )
            condition = " if matched" if rule.match else ""
            parts.append(targets + condition)
        return "reviews → " + "; otherwise ".join(parts)
    return "reviews → no VirtualService (all versions)"


def _wait(
    store: ConfigStore,
    meshes: list[Mesh],
    version: int,
    *,
    nack: bool = False,
    timeout: float = 10.0,
) -> float:
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nack:
            done = all(
                m.watcher.nack is not None and m.watcher.nack.version == version for m in meshes
            )
        else:
            done = all(m.snapshot.version == version for m in meshes)
        if done:
            return (time.perf_counter() - start) * 1000
        time.sleep(0.001)
    raise click.ClickException(
        f"instances did not {'NACK' if nack else 'ACK'} v{version} within {timeout:g}s"
    )


def _show_status(store: ConfigStore) -> None:
    head = store.head()
    render_status(head, list_instances(store.client, store.keys, head, url=store.url))


@click.command()
@click.pass_context
@pass_ctx
@report_errors
def demo(state: CliContext, ctx: click.Context) -> None:
    """A live tour of the control plane: applies, ACKs, a NACK and a rollback (about 5 s)."""
    if not MANIFESTS.is_dir():
        raise MeshwareError(
            f"the Bookinfo manifests are missing ({MANIFESTS}); run from a source checkout"
        )
    out.rule("[bold]meshware demo[/] — the control plane, live")
    with _redis(ctx, state) as url, tempfile.TemporaryDirectory(prefix="meshware-demo-") as tmp:
        store = ConfigStore.from_url(url, mesh=DEMO_MESH)
        meshes = [
            Mesh(
                service,
                version,
                redis_url=url,
                mesh=DEMO_MESH,
                address=f"127.0.0.1:{port}",
                state_dir=tmp,
                heartbeat_interval=0.5,
                instance_ttl=3.0,
            )
            for service, version, port in INSTANCES
        ]
        try:
            for mesh in meshes:
                mesh.start()
            out.print(
                f"Joined {len(meshes)} mesh instances: "
                + ", ".join(f"{m.service} {m.version}" for m in meshes),
                highlight=False,
            )
            step = 0
            for step, (name, why) in enumerate(STEPS, start=1):
                out.print(
                    f"\n[bold cyan]Step {step}[/]  meshware apply -f {name}\n        {why}",
                    highlight=False,
                )
                result = store.apply(load_files([MANIFESTS / name]))
                assert result.record is not None
                ms = _wait(store, meshes, result.record.version)
                out.print(
                    f"        → config v{result.record.version} stored; all {len(meshes)} instances validated and ACKed it in {ms:.1f} ms",
                    highlight=False,
                )
                out.print(
                    f"        {meshes[2].instance_id} now routes: {_routes(meshes[2])}",
                    highlight=False,
                )

            good = store.head()
            assert good is not None
            out.print(
                f"\n[bold cyan]Step {step + 1}[/]  someone with Redis access writes a bad version straight into Redis",
                highlight=False,
            )
            out.print(
                "        (the reviews weight set to 250, bypassing 'meshware apply' and its validation)",
                highlight=False,
            )
            client = redis.Redis.from_url(url, decode_responses=True)
            docs = json.loads(client.hget(store.keys.config, "documents") or "[]")
            for doc in docs:
                if doc.get("kind") == "VirtualService" and doc["metadata"]["name"] == "reviews":
                    doc["spec"]["http"][-1]["route"][0]["weight"] = 250
            bad = good.version + 1
            client.hset(
                store.keys.config,
                mapping={"version": str(bad), "documents": json.dumps(docs), "digest": "tampered"},
            )
            client.publish(store.keys.events, canonical_json({"epoch": good.epoch, "version": bad}))
            client.close()
            ms = _wait(store, meshes, bad, nack=True)
            out.print(
                f"        → every instance NACKed v{bad} in {ms:.1f} ms and keeps serving v{good.version}:",
                highlight=False,
            )
            _show_status(store)

            out.print(
                f"\n[bold cyan]Step {step + 2}[/]  meshware rollback   (restore the last good version as a new one)",
                highlight=False,
            )
            result = store.rollback()
            assert result.record is not None
            ms = _wait(store, meshes, result.record.version)
            out.print(
                f"        → config v{result.record.version} stored; all instances SYNCED in {ms:.1f} ms",
                highlight=False,
            )
            _show_status(store)

            out.print("\n[bold]meshware history[/]", highlight=False)
            table = Table(box=None, pad_edge=False)
            for column in ("VERSION", "ACTION", "CHANGES"):
                table.add_column(column)
            for record in store.history(10):
                table.add_row(
                    f"v{record.version}",
                    record.action,
                    ", ".join(f"{r} {a}" for a, r in record.changes) or record.summary,
                )
            out.print(table)
            out.print(
                "\nNext: 'meshware redis' runs a Redis to keep; 'meshware apply/get/status' drive it. "
                "Routing real requests arrives with the mesh client.",
                highlight=False,
            )
        finally:
            for mesh in meshes:
                mesh.stop()
            store.close()
