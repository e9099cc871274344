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

**Tracing and metrics.** The caller exports its spans over OTLP/HTTP to a sink in this
process (so encoding and export run for real). Every mesh-client row records Istio's golden
metrics. Calls are made inside a request context, as a service handling a request makes them:
**mesh client, 0 % / 1 % / 100 % traced** (the context's sampled flag set on none, one in a
hundred, every call: a CLIENT span plus a child per attempt when set), next to **raw httpx +
OTel httpx instrumentation** (``opentelemetry-instrumentation-httpx``) with 1 % and 100 %
ratio sampling exporting to the same sink: the stock way to get outbound spans.

Reports p50/p99 latency per request and client CPU per request (this process's CPU time,
which is the caller's side; the upstream and nginx run elsewhere), the CPU time of the
calling thread alone (the process also runs four meshes' background threads, whose work
lands on whichever request is being measured, more on the slower ones), and, where Linux
perf counters are available, the user-space instructions of the calling thread, which do not
move with machine noise. nginx is installed with apt-get if missing.
Run: ``python bench/outbound.py [--requests 3000] [--rounds 6]``.
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
from bench import compiled  # noqa: E402

compiled.prefer_compiled()


from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: E402

from bench.inbound import OtlpSink  # noqa: E402
from bench.nginx import NginxHop, nginx_binary  # noqa: E402
from bench.perfcount import instruction_counter  # noqa: E402
from meshware import Mesh  # noqa: E402
from meshware.config.parse import load_yaml  # noqa: E402
from meshware.config.store import ConfigStore  # noqa: E402
from meshware.embedded_redis import RedisServer, free_port  # noqa: E402
from meshware.middleware.context import current_context, from_headers  # noqa: E402
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
            *compiled.python_command(),
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
        env=compiled.child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port)
    return proc


REVIEWS = "reviews.default.svc.cluster.local"


def reviews_meshes(
    redis_url: str, state: str, address: str, otlp_endpoint: str | None = None
) -> list[Mesh]:
    """The bench's config applied, and three "versions" of reviews registered at ``address``."""
    store = ConfigStore.from_url(redis_url)
    store.apply(load_yaml(MESH_CONFIG, "bench"))
    store.close()
    return [
        Mesh(
            "reviews",
            version,
            redis_url=redis_url,
            state_dir=state,
            address=address,
            otlp_endpoint=otlp_endpoint,
        ).start()
        for version in ("v1", "v2", "v3")
    ]


async def discovered(caller: Mesh, endpoints: dict[str, int]) -> None:
    """Wait until ``caller`` routes reviews and sees the endpoints counted per host."""
    deadline = time.monotonic() + 15
    while not caller.route_table.covers(REVIEWS) or any(
        len(caller.endpoint_table.endpoints(host)) < count for host, count in endpoints.items()
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the caller did not discover the upstreams")
        await asyncio.sleep(0.05)


Caller = Callable[[], Awaitable[httpx.Response]]
TRACED_SHARES = (0, 1, 100)
OTEL_SHARES = (1, 100)


def traced_calls(client: httpx.AsyncClient, url: str) -> dict[str, Caller]:
    """The mesh client called inside a request context whose sampled flag is set on
    ``share`` % of the calls (as a service calls while handling requests)."""
    sampled = from_headers({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    unsampled = from_headers({"traceparent": f"00-{'ef' * 16}-{'12' * 8}-00"})

    def call_for(share: int) -> Caller:
        counter = iter(range(10**9))

        async def call() -> httpx.Response:
            context = sampled if next(counter) % 100 < share else unsampled
            token = current_context.set(context)
            try:
                return await client.get(url)
            finally:
                current_context.reset(token)

        return call

    return {f"mesh client, {share} % traced": call_for(share) for share in TRACED_SHARES}


def otel_provider(share: int, sink_url: str) -> TracerProvider:
    """The stock OTel SDK set-up: ratio sampling, batch export over OTLP/HTTP."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"otel-httpx-{share}"}),
        sampler=ParentBased(TraceIdRatioBased(share / 100)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{sink_url}/v1/traces")))
    return provider


def otel_calls(clients: dict[int, httpx.AsyncClient], url: str) -> dict[str, Caller]:
    return {
        f"raw httpx + OTel httpx, {share} % sampled": (lambda c=client: c.get(url))
        for share, client in clients.items()
    }


MTLS = "mesh client, mTLS → meshware serve"


async def measure(
    calls: dict[str, Caller], requests: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Per-request interleaving: request i of every variant runs back to back, so load and
    frequency drift on the machine hit all variants alike."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    thread_cpu: dict[str, list[float]] = {name: [] for name in calls}
    instructions: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm up pools and code paths
        for _ in range(200):
            (await call()).raise_for_status()
    counter = instruction_counter()  # this thread's: the caller's event loop
    items = list(calls.items())
    for i in range(requests):
        order = items if i % 2 == 0 else items[::-1]
        for name, call in order:
            counted = counter.read() if counter is not None else 0
            cpu_start = time.process_time_ns()
            thread_start = time.thread_time_ns()
            start = time.perf_counter_ns()
            response = await call()
            latencies[name].append((time.perf_counter_ns() - start) / 1000)
            cpu[name].append((time.process_time_ns() - cpu_start) / 1000)
            thread_cpu[name].append((time.thread_time_ns() - thread_start) / 1000)
            if counter is not None:
                instructions[name].append(counter.read() - counted)
            assert response.status_code == 200
    del rounds
    return {
        name: {
            "p50_us": statistics.median(samples),
            "p99_us": percentile(samples, 99),
            "cpu_us_per_request": statistics.fmean(cpu[name]),
            "cpu_p50_us": statistics.median(cpu[name]),
            "thread_cpu_p50_us": statistics.median(thread_cpu[name]),
            "instructions_p50": statistics.median(instructions[name])
            if instructions[name]
            else None,
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
    sink = OtlpSink()
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
            meshes += reviews_meshes(redis_server.url, state, f"127.0.0.1:{upstream_port}")
            caller = Mesh(
                "productpage",
                "v1",
                redis_url=redis_server.url,
                state_dir=state,
                cert_dir=Path(state) / "productpage",
                otlp_endpoint=sink.url,
            ).start()
            meshes.append(caller)
            await discovered(
                caller,
                {
                    REVIEWS: 3,
                    "secure.default.svc.cluster.local": 1,
                    "plain.default.svc.cluster.local": 1,
                },
            )
            otel_clients = {share: httpx.AsyncClient() for share in OTEL_SHARES}
            for share, client in otel_clients.items():
                HTTPXClientInstrumentor.instrument_client(
                    client, tracer_provider=otel_provider(share, sink.url)
                )
            async with (
                httpx.AsyncClient() as raw,
                httpx.AsyncClient() as via_nginx,
                caller.async_client() as mesh_client,
            ):
                calls: dict[str, Caller] = {
                    "raw httpx": lambda: raw.get(f"http://127.0.0.1:{upstream_port}/"),
                    "mesh client": lambda: mesh_client.get("http://reviews/"),
                    **traced_calls(mesh_client, "http://reviews/"),
                    **otel_calls(otel_clients, f"http://127.0.0.1:{upstream_port}/"),
                    # a client of their own: httpcore checks every idle connection of its
                    # pool on each request, so sharing raw's would make the baseline costlier
                    "1 nginx hop": lambda: via_nginx.get(f"http://127.0.0.1:{hop_b.port}/"),
                    "2 nginx hops": lambda: via_nginx.get(f"http://127.0.0.1:{hop_a.port}/"),
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
        sink.close()
        upstream.terminate()
        upstream.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="per variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(compiled.FLAG, action="store_true", help=compiled.HELP)
    args = parser.parse_args()
    print(f"meshware: {compiled.build_of()}", file=sys.stderr)
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
    print("\ntracing and metrics, added client CPU per request (p50) vs raw httpx:")
    for name in [f"mesh client, {share} % traced" for share in TRACED_SHARES] + [
        f"raw httpx + OTel httpx, {share} % sampled" for share in OTEL_SHARES
    ]:
        line = (
            f"  {name}: {results[name]['cpu_p50_us'] - raw['cpu_p50_us']:+.0f} µs"
            f" (the caller's thread alone: "
            f"{results[name]['thread_cpu_p50_us'] - raw['thread_cpu_p50_us']:+.0f} µs)"
        )
        if raw["instructions_p50"] is not None:
            added = results[name]["instructions_p50"] - raw["instructions_p50"]
            line += f", {added:+,.0f} instructions (the caller's thread, p50)"
        print(line)
    secure, plain = results[MTLS], results["mesh client → meshware serve"]
    print(
        f"mTLS: pooled p50 {secure['p50_us']:.0f} µs vs plaintext {plain['p50_us']:.0f} µs "
        f"(ratio {secure['p50_us'] / plain['p50_us']:.2f}); "
        f"{secure['handshakes_per_1000_requests']:.2f} handshakes per 1,000 requests "
        f"({secure['handshakes']:.0f} handshakes, {secure['connections']:.0f} connections)"
    )


if __name__ == "__main__":
    main()
