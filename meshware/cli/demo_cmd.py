"""``meshware demo``: Bookinfo's six services as real processes, routed live by the mesh.

With no Redis configured it starts an embedded real ``redis-server``. Each Bookinfo service
runs under ``meshware serve`` as its own process; the tour (:mod:`meshware.demo.tour`) applies
Istio's traffic-management manifests and drives traffic through productpage. Whatever happens
(the end, Ctrl-C, SIGTERM, a service failing to start) every process it started is stopped.

The demo runs with signed config: it creates an operator key in its temporary directory, its
services trust only that key (``MESHWARE_TRUSTED_KEYS``) and every version it applies is
signed, so the version it later writes straight into Redis is refused by every instance.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import click

from meshware.cli.context import CliContext, out, pass_ctx, report_errors
from meshware.config.connection import redact
from meshware.config.store import ConfigStore
from meshware.demo.services import BOOKINFO, Service, ServiceGroup, assign_ports
from meshware.demo.tour import Tour
from meshware.embedded_redis import RedisServer, free_port
from meshware.errors import MeshwareError
from meshware.security.signing import write_key_pair

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "examples" / "bookinfo" / "manifests"
DEMO_MESH = "demo"
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def _redis(url: str | None, services: list[Service]) -> Iterator[str]:
    if url is not None:
        out.print(f"Redis: {redact(url)} (mesh '{DEMO_MESH}')", highlight=False)
        yield url
        return
    taken = {service.port for service in services}
    port = free_port()
    while port in taken:  # the OS may hand out a port the services are about to bind
        port = free_port()
    with RedisServer(port=port) as server:
        out.print(
            f"Redis: embedded redis-server on 127.0.0.1:{server.port} "
            "(pass --redis-url to use your own)",
            highlight=False,
        )
        yield server.url


def _explicit_redis(ctx: click.Context, state: CliContext, redis_url: str | None) -> str | None:
    if redis_url is not None:
        return redis_url
    source = ctx.find_root().get_parameter_source("redis_url")
    if source not in (click.core.ParameterSource.DEFAULT, None):
        return state.redis_url  # meshware --redis-url ... demo, or MESHWARE_REDIS_URL
    return None


def jaeger_ui(otlp_endpoint: str | None) -> str | None:
    """Jaeger's UI beside its OTLP/HTTP port (4318 → 16686), where a trace can be opened."""
    if not otlp_endpoint:
        return None
    url = urlsplit(otlp_endpoint)
    if url.port != 4318 or not url.hostname:
        return None
    return f"{url.scheme}://{url.hostname}:16686/trace/"


class _Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so every child is stopped."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _started(service: Service, seconds: float) -> None:
    out.print(
        f"  [green]✓[/] {service.name:<15} http://127.0.0.1:{service.port}  ({seconds:.1f} s)",
        highlight=False,
    )


def _serve_forever(
    url: str, services: list[Service], group: ServiceGroup, signing_key: Path
) -> None:
    productpage = next(s for s in services if s.service == "productpage")
    out.rule("[bold]the mesh keeps running[/] (Ctrl-C stops it)")
    out.print(
        f"  curl -H 'end-user: jason' http://127.0.0.1:{productpage.port}/productpage\n"
        f"  export MESHWARE_REDIS_URL={redact(url)} MESHWARE_MESH={DEMO_MESH} "
        f"MESHWARE_SIGNING_KEY={signing_key}\n"
        "  meshware status; meshware get virtualservices; meshware history; "
        f"meshware apply -f {MANIFESTS.relative_to(ROOT)}/virtual-service-all-v1.yaml\n"
        f"  service logs: {group.log_dir}",
        highlight=False,
        markup=False,
    )
    while True:
        group.check_alive()
        time.sleep(0.5)


@click.command()
@click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help="Use this Redis (mesh 'demo') instead of an embedded one. "
    "Also taken from the global --redis-url or MESHWARE_REDIS_URL.",
)
@click.option(
    "--serve",
    "keep_serving",
    is_flag=True,
    help="After the tour, keep the services running for exploration until Ctrl-C.",
)
@click.option(
    "--port",
    "base_port",
    type=click.IntRange(0, 65529),
    default=9080,
    show_default=True,
    help="productpage's port; the other five services take the next ports. 0 picks free ports.",
)
@click.option(
    "--requests",
    type=click.IntRange(min=30),
    default=600,
    show_default=True,
    help="Requests sent through productpage at each routing step.",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option(
    "--otlp-endpoint",
    default=None,
    metavar="URL",
    help="Export the services' spans over OTLP/HTTP, e.g. to Jaeger at http://localhost:4318.",
)
@click.pass_context
@pass_ctx
@report_errors
def demo(
    state: CliContext,
    ctx: click.Context,
    redis_url: str | None,
    keep_serving: bool,
    base_port: int,
    requests: int,
    concurrency: int,
    otlp_endpoint: str | None,
) -> None:
    """Run Bookinfo's six services and walk through canary, shift and A/B routing (20-40 s).

    Starts an embedded Redis unless one is given, launches productpage, details, reviews
    v1/v2/v3 and ratings as their own 'meshware serve' processes, then applies Istio's
    Bookinfo routes one by one while driving traffic, showing the split per reviews version
    live. Exits 0 when every split matched its weights; stops every process it started.
    """
    if not MANIFESTS.is_dir():
        raise MeshwareError(
            f"the Bookinfo example is missing ({MANIFESTS}); meshware demo runs from a source "
            "checkout installed with pip install -e"
        )
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _demo(
            _explicit_redis(ctx, state, redis_url),
            keep_serving,
            base_port,
            requests,
            concurrency,
            otlp_endpoint,
        )
    except (KeyboardInterrupt, _Terminated):
        out.print(
            f"\n[yellow]{'stopped' if keep_serving else 'interrupted'}[/]: every process the demo "
            f"started has exited ({time.monotonic() - started:.1f} s)",
            highlight=False,
        )
        ctx.exit(0 if keep_serving else EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.print(f"\ndemo finished in {time.monotonic() - started:.1f} s", highlight=False)


def _demo(
    redis_url: str | None,
    keep_serving: bool,
    base_port: int,
    requests: int,
    concurrency: int,
    otlp_endpoint: str | None,
) -> None:
    out.rule("[bold]meshware demo[/]: Bookinfo on a proxyless mesh")
    services = assign_ports(BOOKINFO, base_port)
    env = {"MESHWARE_HEARTBEAT_INTERVAL": "0.5", "MESHWARE_INSTANCE_TTL": "3"}
    if otlp_endpoint:
        env["MESHWARE_OTLP_ENDPOINT"] = otlp_endpoint
        out.print(
            f"Traces: every service exports spans to {otlp_endpoint} (OTLP/HTTP); sample "
            "requests are always traced, other traffic at Istio's default 1%",
            highlight=False,
        )
    with (
        _redis(redis_url, services) as url,
        tempfile.TemporaryDirectory(prefix="meshware-demo-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        key, key_path, public_path = write_key_pair(tmp / "keys", "operator")
        with contextlib.closing(ConfigStore.from_url(url, mesh=DEMO_MESH, signer=key)) as store:
            _start_afresh(store)
            out.print(
                f"Signed config: operator key {key.key_id}, made for this run; the services "
                "trust only it (MESHWARE_TRUSTED_KEYS) and the demo signs every version it applies",
                highlight=False,
            )
            group = ServiceGroup(
                services,
                redis_url=url,
                mesh=DEMO_MESH,
                root=ROOT,
                log_dir=tmp / "logs",
                env={
                    **env,
                    "MESHWARE_STATE_DIR": str(tmp / "state"),
                    "MESHWARE_TRUSTED_KEYS": str(public_path),
                },
            )
            out.print(
                f"Starting {len(services)} services, each under 'meshware serve':",
                highlight=False,
            )
            with group:
                group.wait_listening(60.0, _started)
                tour = Tour(
                    out,
                    store,
                    MANIFESTS,
                    services,
                    requests=requests,
                    concurrency=concurrency,
                    check_alive=group.check_alive,
                    trace_viewer=jaeger_ui(otlp_endpoint),
                )
                tour.wait_serving()
                tour.run()
                if tour.mismatches:
                    raise MeshwareError(
                        "the traffic did not follow the applied routes:\n  "
                        + "\n  ".join(tour.mismatches)
                    )
                if keep_serving:
                    _serve_forever(url, services, group, key_path)
                out.print(
                    "\nStopping the services (each drains before it exits)...", highlight=False
                )


def _start_afresh(store: ConfigStore) -> None:
    """Clear config an earlier demo left in this mesh: that run's key signed it."""
    head = store.head()  # fails clearly now if the Redis is unreachable
    if head is None:
        return
    store.client.delete(store.keys.config, store.keys.history)
    out.print(
        f"Mesh '{DEMO_MESH}' held config v{head.version} from an earlier run, signed by another "
        "key: starting it afresh",
        highlight=False,
    )
