"""Outbound cost: the mesh client against raw httpx and the sidecar model (nginx hops).

One run, one upstream (a bare ASGI app under uvicorn, its own process), four ways to call it
from an ``httpx.AsyncClient`` in this process, interleaved in rounds so drift hits all alike:

* **raw httpx**: straight to the upstream;
* **mesh client**: ``http://reviews/`` through meshware with a 3-way weighted route
  (v1/v2/v3 all registered at the upstream's address), retries and outlier detection on;
* **1 nginx hop**: raw httpx through one nginx reverse proxy (the sidecar model);
* **2 nginx hops**: through two (Istio's client-side and server-side sidecars);
* **mesh client → meshware serve** and **mesh client, mTLS → meshware serve**: the same app
  under ``meshware serve`` (so with the inbound middleware), once plaintext and once with
  ``--cert-dir`` (STRICT mutual TLS, certificates from a CA made for the run): pooled mutual
  TLS with the SPIFFE identity checked once per connection. The report gives the ratio of
  the two and the handshakes per 1,000 requests (which must equal the connections opened,
  not the requests).

Reports p50/p99 latency per request and client CPU per request (this process's CPU time,
which is the caller's side; the upstream and nginx run elsewhere). nginx is installed with
apt-get if missing. Run: ``python bench/outbound.py [--requests 3000] [--rounds 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nginx import NginxHop, nginx_binary  # noqa: E402
from meshware import Mesh  # noqa: E402
from meshware.config.parse import load_yaml  # noqa: E402
from meshware.config.store import ConfigStore  # noqa: E402
from meshware.embedded_redis import RedisServer, free_port  # noqa: E402
from meshware.security.ca import CertificateAuthority, write_credentials  # noqa: E402
from meshware.transport.secure import STATS  # noqa: E402

MESH_CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
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
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    - {destination: {host: reviews, subset: v3}, weight: 10}
    retries: {attempts: 2, retryOn: "connect-failure,refused-stream,gateway-error"}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.hello_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port)
    return proc


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"upstream on {port} did not start")
        time.sleep(0.05)


def start_served_upstream(
    port: int, redis_url: str, service: str, cert_dir: Path | None
) -> subprocess.Popen[bytes]:
    """The same app under ``meshware serve`` as ``service``; with ``cert_dir``, STRICT mutual
    TLS (it advertises mTLS, so the caller switches to it by itself)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshware",
            "--redis-url",
            redis_url,
            "serve",
            "bench.hello_app:app",
            "--service",
            service,
            "--port",
            str(port),
            *(["--cert-dir", str(cert_dir)] if cert_dir is not None else []),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port)
    return proc


Caller = Callable[[], Awaitable[httpx.Response]]
MTLS = "mesh client, mTLS → meshware serve"


async def measure(
    calls: dict[str, Caller], requests: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Per-request interleaving: request i of every variant runs back to back, so load and
    frequency drift on the machine hit all variants alike."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm up pools and code paths
        for _ in range(200):
            (await call()).raise_for_status()
    items = list(calls.items())
    for i in range(requests):
        order = items if i % 2 == 0 else items[::-1]
        for name, call in order:
            cpu_start = time.process_time_ns()
            start = time.perf_counter_ns()
            response = await call()
            latencies[name].append((time.perf_counter_ns() - start) / 1000)
            cpu[name].append((time.process_time_ns() - cpu_start) / 1000)
            assert response.status_code == 200
    del rounds
    return {
        name: {
            "p50_us": statistics.median(samples),
            "p99_us": percentile(samples, 99),
            "cpu_us_per_request": statistics.fmean(cpu[name]),
            "cpu_p50_us": statistics.median(cpu[name]),
            "requests": len(samples),
        }
        for name, samples in latencies.items()
    }


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    upstream_port = free_port()
    upstream = start_upstream(upstream_port)
    binary = nginx_binary()
    hop_b = NginxHop(binary, free_port(), upstream_port)
    hop_a = NginxHop(binary, free_port(), hop_b.port)
    meshes: list[Mesh] = []
    served: list[subprocess.Popen[bytes]] = []
    try:
        with RedisServer() as redis_server, tempfile.TemporaryDirectory() as state:
            ca = CertificateAuthority.init(Path(state) / "ca")
            write_credentials(Path(state) / "secure", ca.issue("secure"))
            write_credentials(Path(state) / "productpage", ca.issue("productpage"))
            served.append(
                start_served_upstream(
                    free_port(), redis_server.url, "secure", Path(state) / "secure"
                )
            )
            served.append(start_served_upstream(free_port(), redis_server.url, "plain", None))
            store = ConfigStore.from_url(redis_server.url)
            store.apply(load_yaml(MESH_CONFIG, "bench"))
            store.close()
            for version in ("v1", "v2", "v3"):  # three "versions" registered at one upstream
                meshes.append(
                    Mesh(
                        "reviews",
                        version,
                        redis_url=redis_server.url,
                        state_dir=state,
                        address=f"127.0.0.1:{upstream_port}",
                    ).start()
                )
            caller = Mesh(
                "productpage",
                "v1",
                redis_url=redis_server.url,
                state_dir=state,
                cert_dir=Path(state) / "productpage",
            ).start()
            meshes.append(caller)
            host = "reviews.default.svc.cluster.local"
            deadline = time.monotonic() + 15
            secure_host = "secure.default.svc.cluster.local"
            while (
                len(caller.endpoint_table.endpoints(host)) < 3
                or not caller.route_table.covers(host)
                or not caller.endpoint_table.endpoints(secure_host)
                or not caller.endpoint_table.endpoints("plain.default.svc.cluster.local")
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the caller did not discover the upstream")
                await asyncio.sleep(0.05)
            async with (
                httpx.AsyncClient() as raw,
                caller.async_client() as mesh_client,
            ):
                calls: dict[str, Caller] = {
                    "raw httpx": lambda: raw.get(f"http://127.0.0.1:{upstream_port}/"),
                    "mesh client": lambda: mesh_client.get("http://reviews/"),
                    "1 nginx hop": lambda: raw.get(f"http://127.0.0.1:{hop_b.port}/"),
                    "2 nginx hops": lambda: raw.get(f"http://127.0.0.1:{hop_a.port}/"),
                    "mesh client → meshware serve": lambda: mesh_client.get("http://plain/"),
                    "mesh client, mTLS → meshware serve": lambda: mesh_client.get("http://secure/"),
                }
                results = await measure(calls, args.requests, args.rounds)
                requests = results[MTLS]["requests"] + 200  # with the warm-up
                results[MTLS]["handshakes"] = STATS.handshakes
                results[MTLS]["connections"] = STATS.connections
                results[MTLS]["handshakes_per_1000_requests"] = 1000 * STATS.handshakes / requests
                return results
    finally:
        for mesh in meshes:
            mesh.stop()
        for proc in served:
            proc.terminate()
        for proc in served:
            proc.wait(timeout=20)
        hop_a.close()
        hop_b.close()
        upstream.terminate()
        upstream.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="per variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    raw = results["raw httpx"]
    hop = results["1 nginx hop"]["p50_us"] - raw["p50_us"]
    print(
        f"outbound, {results['raw httpx']['requests']:.0f} sequential requests per row, cpus={os.cpu_count()}"
    )
    print(
        "| client | p50 µs | p99 µs | added p50 µs | client CPU µs/req (mean / p50) | added CPU p50 µs |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        added = r["p50_us"] - raw["p50_us"]
        added_cpu = r["cpu_p50_us"] - raw["cpu_p50_us"]
        print(
            f"| {name} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {added:+.0f} | "
            f"{r['cpu_us_per_request']:.0f} / {r['cpu_p50_us']:.0f} | {added_cpu:+.0f} |"
        )
    mesh_added = results["mesh client"]["p50_us"] - raw["p50_us"]
    print(
        f"\nmesh added p50 / one nginx hop added p50 = {mesh_added:.0f} / {hop:.0f} = {mesh_added / hop:.2f}"
        " (target: at most 0.5)"
    )
    secure, plain = results[MTLS], results["mesh client → meshware serve"]
    print(
        f"mTLS: pooled p50 {secure['p50_us']:.0f} µs vs plaintext {plain['p50_us']:.0f} µs "
        f"(ratio {secure['p50_us'] / plain['p50_us']:.2f}); "
        f"{secure['handshakes_per_1000_requests']:.2f} handshakes per 1,000 requests "
        f"({secure['handshakes']:.0f} handshakes, {secure['connections']:.0f} connections)"
    )


if __name__ == "__main__":
    main()
