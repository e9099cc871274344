"""Inbound cost: a hello-world Starlette app under uvicorn, bare, with ``MeshMiddleware``, and
with the stock OpenTelemetry ASGI middleware, loaded by ``wrk``.

One run measures every variant, each in its own uvicorn process (one worker, 127.0.0.1, a
free port, ``--no-access-log``, lifespan on, log level warning). All servers are started and
warmed up first; then every round loads each of them for ``--duration`` seconds, one after
the other, in an order that rotates from round to round. Each figure is the median over
rounds, and each ratio the median of the per-round ratios (variants measured seconds apart),
so that drift on the machine hits all variants alike:

* **a: no middleware**: the app alone (``bench/inbound_apps.py``);
* **b: MeshMiddleware**: bound to a started ``Mesh`` registered in an embedded Redis, with a
  DestinationRule, a sticky-header VirtualService and a Telemetry resource (tracing at 1 %,
  metrics on) applied through ``ConfigStore``, and ``MESHWARE_OTLP_ENDPOINT`` pointing at an
  OTLP/HTTP sink in this process that counts spans and keeps none. Per request the
  middleware parses the trace context, baggage and deadline, generates a request id, picks
  up the sticky header, counts the request in flight, and records a SERVER span for the
  sampled ones, exported by the mesh's batching thread, and counts the request in Istio's
  golden metrics (the Telemetry ``metrics`` entry has no overrides, Istio's default). (A
  meshware without tracing runs too; the table's notes say which it was.)
* **c: OTel ASGI**: ``OpenTelemetryMiddleware`` with an SDK ``TracerProvider`` sampling
  ``ParentBased(TraceIdRatioBased(0.01))``, a ``BatchSpanProcessor`` and a discarding
  exporter; no-op metrics.

Extra rows (``--no-extras`` skips them): b and c with *every* request sampled, and c with an
SDK ``MeterProvider`` (periodic reader, discarding exporter). Controls, run only when named in
``--only``: a pass-through middleware (``pass``), and a started mesh without the middleware
(``runtime``), which tell the middleware's own cost from that of one more layer or of the
mesh's background thread.

Every request carries the same kind of headers, for every variant: a ``traceparent`` with a
random trace id and parent span id whose sampled flag is set on every 100th request (a caller
upstream that samples 1 %; b and c both follow the parent's decision, so both record 1 % of
requests and the table shows the spans each exported per request), a
``baggage`` header, an ``x-meshware-deadline-ms`` and the sticky ``end-user`` header; no
``x-request-id``, so the mesh generates one. ``wrk`` (Debian's, installed with apt-get if
missing) runs one thread pinned to one core, the server to the other; each server is warmed
up before it is measured.

Reported per variant: requests/s, p50/p99 latency as wrk measures it (32 connections: the
latency of a saturated server, mostly queueing), the server process's CPU time per request
(all its threads, from /proc), the requests/s that CPU cost allows on one core, and the ratios
to (a). Target: b keeps at least 85 % of a's throughput and beats c.

The machine has two cores and may be shared (a test suite running next to the bench): before
each measurement the bench waits (``--quiet-wait``) for the server's core to be idle, and a
measurement during which the server got less than ``--min-busy`` of its core is repeated
(``--retries``); the table counts the repeats and shows how busy the server's core was.

    python bench/inbound.py                    # 6 rounds of 5 s per variant
    python bench/inbound.py --rounds 3 --no-extras --json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import compiled  # noqa: E402

compiled.prefer_compiled()


from bench.perfcount import ProcessInstructions  # noqa: E402
from meshware.config.parse import load_yaml  # noqa: E402
from meshware.config.registry import list_instances  # noqa: E402
from meshware.config.store import ConfigStore  # noqa: E402
from meshware.embedded_redis import RedisServer, free_port  # noqa: E402

SERVICE = "hello"

MESH_CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: hello
  annotations:
    meshware.io/sticky: "header:end-user"
spec:
  hosts: [hello]
  http:
  - route:
    - {destination: {host: hello, subset: v1}, weight: 90}
    - {destination: {host: hello, subset: v2}, weight: 10}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: default}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 1.0
  metrics:
  - providers: [{name: prometheus}]
"""

# Per request: a fresh W3C traceparent (random trace and parent ids), sampled on every
# Nth request (N = 1 / the fraction given after `--`); done() prints one JSON line.
WRK_SCRIPT = """
local period = 100
local counter = 0

function init(args)
  local fraction = tonumber(args[1] or "0.01")
  if fraction <= 0 then period = 0 else period = math.floor(1 / fraction + 0.5) end
  math.randomseed(os.time() + os.clock() * 1000000)
end

local r = math.random

function request()
  counter = counter + 1
  local flags = "00"
  if period > 0 and counter % period == 0 then flags = "01" end
  wrk.headers["traceparent"] = string.format(
    "00-%04x%04x%04x%04x%04x%04x%04x%04x-%04x%04x%04x%04x-%s",
    r(1, 65535), r(0, 65535), r(0, 65535), r(0, 65535),
    r(0, 65535), r(0, 65535), r(0, 65535), r(0, 65535),
    r(1, 65535), r(0, 65535), r(0, 65535), r(0, 65535), flags)
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'bench-wrk-json {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %.0f, "p90": %.0f, "p99": %.0f, "p999": %.0f, "max": %.0f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""

STATIC_HEADERS = (
    "baggage: userId=alice,serverNode=DF%2028,isProduction=false;env=prod",
    "x-meshware-deadline-ms: 5000",
    "end-user: jason",
)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    factory: str
    sampled: float = 0.01
    """Fraction of requests whose traceparent has the sampled flag."""
    service: str = ""
    """The mesh service name a mesh variant exports spans as."""
    group: str = "main"
    """``main`` (a, b, c), ``extra`` (skipped by ``--no-extras``) or ``control`` (only run
    when named in ``--only``)."""


VARIANTS = (
    Variant("a", "a: no middleware", "bare"),
    Variant("b", "b: MeshMiddleware, 1 % sampled", "mesh", service=SERVICE),
    Variant("c", "c: OTel ASGI, 1 % sampled", "otel"),
    Variant(
        "b-none",
        "b: MeshMiddleware, none sampled (0 %)",
        "mesh_none",
        sampled=0.0,
        service=f"{SERVICE}-none",
        group="extra",
    ),
    Variant(
        "b-all",
        "b: MeshMiddleware, every request sampled",
        "mesh_all",
        sampled=1.0,
        service=f"{SERVICE}-all",
        group="extra",
    ),
    Variant("c-all", "c: OTel ASGI, every request sampled", "otel", sampled=1.0, group="extra"),
    Variant("c-metrics", "c: OTel ASGI + SDK metrics, 1 %", "otel_metrics", group="extra"),
    Variant("pass", "control: pass-through middleware", "pass_through", group="control"),
    Variant("runtime", "control: started mesh, no middleware", "mesh_runtime", group="control"),
)


def wrk_binary() -> str:
    """wrk's path, installing Debian's package when it is missing (needs root and apt)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get ...", file=sys.stderr, flush=True)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"bench/inbound.py needs wrk, and installing it failed ({exc}); "
            "install it yourself (Debian/Ubuntu: apt-get install wrk) and run again"
        ) from exc
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block (and the processes it starts, which inherit it) on ``cpus``."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_idle(cpu: int, seconds: float = 0.5) -> float:
    """The fraction of ``seconds`` that core ``cpu`` was idle (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name == f"cpu{cpu}":
                ticks = [int(f) for f in fields]
                return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, total
        raise RuntimeError(f"cpu{cpu} is not in /proc/stat")

    idle_before, total_before = sample()
    time.sleep(seconds)
    idle_after, total_after = sample()
    return (idle_after - idle_before) / max(1, total_after - total_before)


def wait_quiet(cpus: set[int] | None, needed: float, timeout: float) -> None:
    """Wait (up to ``timeout`` s) until the server's core is at least ``needed`` idle, so a
    measurement does not start while another process (a test suite) occupies it."""
    if not cpus or needed <= 0:
        return
    cpu = min(cpus)
    deadline = time.monotonic() + timeout
    idle = core_idle(cpu)
    if idle >= needed:
        return
    print(f"  cpu {cpu} is busy ({1 - idle:.0%}); waiting for it", file=sys.stderr, flush=True)
    while idle < needed and time.monotonic() < deadline:
        idle = core_idle(cpu, 1.0)


class Server:
    """One uvicorn process serving ``bench.inbound_apps:<factory>``."""

    def __init__(self, factory: str, cpus: set[int] | None, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="meshware-inbound-", suffix=".log")  # noqa: SIM115
        command = [
            *compiled.python_command(),
            "-m",
            "uvicorn",
            f"bench.inbound_apps:{factory}",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--lifespan",
            "on",
            "--log-level",
            "warning",
            *compiled.uvicorn_app_dir(),
        ]
        env = compiled.child_env(
            {**os.environ, **env, "MESHWARE_ADDRESS": f"127.0.0.1:{self.port}"}
        )
        with pinned(cpus):
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 30.0) -> str | None:
        """None once the server answers 200; else its log, after stopping it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                return self.stop() or f"(no output; exit code {self.process.returncode})"
            time.sleep(0.05)

    @classmethod
    def start(cls, factory: str, cpus: set[int] | None, env: dict[str, str]) -> Server:
        """A server that answers, trying up to three times (a free port can be taken by
        another process between the probe and uvicorn's bind)."""
        for attempt in range(3):
            server = cls(factory, cpus, env)
            failure = server.wait_ready()
            if failure is None:
                return server
            if attempt == 2:
                raise RuntimeError(f"{factory}: the server did not start:\n{failure}")
            print(f"  {factory}: the server did not start; again:\n{failure}", file=sys.stderr)
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> str:
        """Stop (SIGTERM: lifespan shutdown runs, the mesh drains) and return the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        text = self.output()
        self.log.close()
        return text


class OtlpSink:
    """An OTLP/HTTP collector on 127.0.0.1 that counts the spans it receives and keeps none.

    (b) exports to it, so the mesh's own export path (OTLP protobuf encoding and HTTP POSTs
    from its batching thread) runs for real; the sink runs in this process, on wrk's core.
    """

    def __init__(self) -> None:
        self.spans: dict[str, int] = {}
        """Spans received per ``service.name``."""
        self.posts = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                sink.count(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self._lock:
            self.posts += 1
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                spans = sum(len(s.spans) for s in resource_spans.scope_spans)
                self.spans[service] = self.spans.get(service, 0) + spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Load:
    """How ``wrk`` loads a server: one thread, pinned, with the bench's headers and script."""

    binary: str
    script: Path
    connections: int
    cpus: set[int] | None

    def run(self, url: str, *, seconds: float, sampled: float) -> dict[str, Any]:
        """One wrk run; its ``done()`` summary (requests, duration, errors, latency in µs)."""
        command = [
            self.binary,
            "-t1",
            f"-c{self.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(self.script),
            *(arg for header in STATIC_HEADERS for arg in ("-H", header)),
            url,
            "--",
            str(sampled),
        ]
        with pinned(self.cpus):
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("bench-wrk-json "):
                result: dict[str, Any] = json.loads(line.partition(" ")[2])
                return result
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def check_mesh_synced(store: ConfigStore) -> str:
    """The mesh instance serving (b) must be registered and run the current config."""
    deadline = time.monotonic() + 10
    while True:
        head = store.head()
        instances = [
            s
            for s in list_instances(store.client, store.keys, head)
            if s.record.service == SERVICE and not s.record.draining
        ]
        if len(instances) == 1 and instances[0].state == "SYNCED":
            record = instances[0].record
            return f"{record.instance} SYNCED at config v{record.config_version}"
        if time.monotonic() > deadline:
            states = [(s.record.instance, s.state, s.reason) for s in instances]
            raise RuntimeError(f"expected one SYNCED {SERVICE} instance, found {states}")
        time.sleep(0.05)


class Bench:
    """The servers of one run, all started up front and measured in turn."""

    def __init__(self, args: argparse.Namespace, variants: list[Variant]) -> None:
        self.args = args
        self.variants = variants
        cpus = sorted(os.sched_getaffinity(0))
        self.wrk_cpus: set[int] | None = None
        self.server_cpus: set[int] | None = None
        if len(cpus) >= 2 and not args.no_pin:
            self.wrk_cpus, self.server_cpus = {cpus[0]}, {cpus[-1]}
        self.min_busy = args.min_busy if self.server_cpus else 0.0
        self.runs: dict[str, list[dict[str, Any]]] = {v.key: [] for v in variants}
        self.served: dict[str, int] = dict.fromkeys(self.runs, 0)
        self.spans: dict[str, int] = {}
        self.notes: list[str] = []

    def measure_once(self, load: Load, server: Server, variant: Variant) -> dict[str, Any]:
        """One measurement; one during which the server had less than ``--min-busy`` of its
        core (another process took it) is repeated, up to ``--retries`` times."""
        args = self.args
        for attempt in range(args.retries + 1):
            wait_quiet(self.server_cpus, self.min_busy, args.quiet_wait)
            cpu_before = cpu_seconds(server.process.pid)
            with ProcessInstructions(server.process.pid) as counted:
                result = load.run(server.url, seconds=args.duration, sampled=variant.sampled)
            result["cpu_s"] = cpu_seconds(server.process.pid) - cpu_before
            result["instructions"] = counted.count
            result["repeats"] = attempt
            self.served[variant.key] += result["requests"]
            busy = result["cpu_s"] / (result["duration_us"] / 1e6)
            if busy >= self.min_busy:
                break
            if attempt < args.retries:
                print(
                    f"  {variant.label}: the server had {busy:.0%} of its core; again",
                    file=sys.stderr,
                    flush=True,
                )
        return result

    def run(self) -> None:
        args = self.args
        with (
            tempfile.TemporaryDirectory(prefix="meshware-inbound-") as tmp,
            pinned(self.wrk_cpus),  # this process and its Redis stay off the server's core
            RedisServer() as redis_server,
            contextlib.closing(OtlpSink()) as sink,
        ):
            script = Path(tmp) / "inbound.lua"
            script.write_text(WRK_SCRIPT)
            load = Load(wrk_binary(), script, args.connections, self.wrk_cpus)
            store = ConfigStore.from_url(redis_server.url)
            store.apply(load_yaml(MESH_CONFIG, "bench"))
            env = {
                "MESHWARE_SERVICE": SERVICE,
                "MESHWARE_VERSION": "v1",
                "MESHWARE_REDIS_URL": redis_server.url,
                "MESHWARE_STATE_DIR": str(Path(tmp) / "state"),
                "MESHWARE_OTLP_ENDPOINT": sink.url,
            }
            servers: dict[str, Server] = {}
            try:
                for variant in self.variants:
                    servers[variant.key] = Server.start(variant.factory, self.server_cpus, env)
                    if variant.factory == "mesh":
                        self.notes.append(f"b: mesh instance {check_mesh_synced(store)}")
                        self.notes.extend(
                            "b: " + line.partition(" ")[2]
                            for line in servers[variant.key].output().splitlines()
                            if line.startswith("bench-mesh ")
                        )
                for variant in self.variants:  # warm up code paths and connections
                    warm = load.run(
                        servers[variant.key].url, seconds=args.warmup, sampled=variant.sampled
                    )
                    self.served[variant.key] += warm["requests"]
                for number in range(args.rounds):
                    shift = number % len(self.variants)
                    for variant in self.variants[shift:] + self.variants[:shift]:
                        result = self.measure_once(load, servers[variant.key], variant)
                        self.runs[variant.key].append({"round": number + 1, **result})
                        one = summarise([result])
                        print(
                            f"round {number + 1}/{args.rounds} {variant.label}: "
                            f"{one['rps']:,.0f} req/s, p50 {one['p50_us'] / 1000:.1f} ms, "
                            f"p99 {one['p99_us'] / 1000:.1f} ms, "
                            f"server CPU {one['cpu_us_per_request']:.0f} µs/req",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                for key, server in servers.items():
                    for line in server.stop().splitlines():  # the mesh exports what is queued
                        if line.startswith("bench-spans-exported "):
                            self.spans[key] = int(line.split()[1])
                store.close()
            for variant in self.variants:  # the mesh variants export over OTLP to the sink
                if variant.service and variant.key in servers:
                    self.spans[variant.key] = sink.spans.get(variant.service, 0)

    def report(self) -> dict[str, Any]:
        results = {v.key: {"label": v.label, **summarise(self.runs[v.key])} for v in self.variants}
        for key, spans in self.spans.items():
            results[key]["spans_per_request"] = spans / max(1, self.served[key])
        a = results["a"]
        a_rounds = a["rounds"]
        for r in results.values():
            # Paired: each round's figure over a's in the same round, then the median.
            r["throughput_ratio"] = paired_ratio(r["rounds"], a_rounds, "rps")
            r["cpu_capacity_ratio"] = paired_ratio(r["rounds"], a_rounds, "cpu_capacity_rps")
            r["added_cpu_us_per_request"] = statistics.median(
                x["cpu_us_per_request"] - y["cpu_us_per_request"]
                for x, y in zip(r["rounds"], a_rounds, strict=True)
            )
            if r["instructions_per_request"] is not None and a["instructions_per_request"]:
                r["added_instructions_per_request"] = statistics.median(
                    x["instructions_per_request"] - y["instructions_per_request"]
                    for x, y in zip(r["rounds"], a_rounds, strict=True)
                )
        target: dict[str, Any] | None = None
        if "b" in results and "c" in results:
            b, c = results["b"], results["c"]
            b_over_c = paired_ratio(b["rounds"], c["rounds"], "rps")
            b_over_c_cpu = paired_ratio(b["rounds"], c["rounds"], "cpu_capacity_rps")
            target = {
                "b_over_a": b["throughput_ratio"],
                "b_over_a_per_round": [
                    x["rps"] / y["rps"] for x, y in zip(b["rounds"], a_rounds, strict=True)
                ],
                "b_over_c": b_over_c,
                "holds": b["throughput_ratio"] >= 0.85 and b_over_c > 1,
                "b_over_a_cpu": b["cpu_capacity_ratio"],
                "b_over_c_cpu": b_over_c_cpu,
                "holds_cpu": b["cpu_capacity_ratio"] >= 0.85 and b_over_c_cpu > 1,
            }
        args = self.args
        return {
            "variants": results,
            "target": target,
            "setup": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "connections": args.connections,
                "wrk_threads": 1,
                "wrk_cpus": sorted(self.wrk_cpus) if self.wrk_cpus else None,
                "server_cpus": sorted(self.server_cpus) if self.server_cpus else None,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "uvicorn_http": _first_importable("httptools", "h11"),
                "uvicorn_loop": _first_importable("uvloop") or "asyncio",
            },
            "notes": self.notes,
        }


def a_of(report: dict[str, Any]) -> dict[str, Any]:
    variant: dict[str, Any] = report["variants"]["a"]
    return variant


def paired_ratio(rounds: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(x[key] / y[key] for x, y in zip(rounds, base, strict=True)))


def _first_importable(*names: str) -> str | None:
    for name in names:
        with contextlib.suppress(ImportError):
            __import__(name)
            return name
    return None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each figure; the per-round values are kept."""
    per_round = []
    for r in runs:
        seconds = r["duration_us"] / 1e6
        cpu_us = r["cpu_s"] / r["requests"] * 1e6
        per_round.append(
            {
                "rps": r["requests"] / seconds,
                "p50_us": r["latency_us"]["p50"],
                "p99_us": r["latency_us"]["p99"],
                "cpu_us_per_request": cpu_us,
                "cpu_capacity_rps": 1e6 / cpu_us,
                "server_busy": r["cpu_s"] / seconds,
                "errors": sum(r["errors"].values()),
                "requests": r["requests"],
                "repeats": r["repeats"],
                "instructions_per_request": (
                    r["instructions"] / r["requests"] if r.get("instructions") else None
                ),
            }
        )
    keys = ("rps", "p50_us", "p99_us", "cpu_us_per_request", "cpu_capacity_rps", "server_busy")
    out: dict[str, Any] = {k: statistics.median(p[k] for p in per_round) for k in keys}
    counted = [p["instructions_per_request"] for p in per_round]
    out["instructions_per_request"] = (
        statistics.median(counted) if counted and None not in counted else None
    )
    out["errors"] = sum(p["errors"] for p in per_round)
    out["repeats"] = sum(p["repeats"] for p in per_round)
    out["rounds"] = per_round
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load first")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--no-extras", dest="extras", action="store_false")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help="comma-separated variants to run besides a: b, c, c-all, c-metrics, "
        "and the controls pass, runtime",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin wrk and the server")
    parser.add_argument(
        "--min-busy",
        type=float,
        default=0.9,
        help="repeat a measurement in which the server had less of its core (default 0.9)",
    )
    parser.add_argument("--retries", type=int, default=1, help="repeats per measurement")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="seconds to wait at most for the server's core to be idle before measuring",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(compiled.FLAG, action="store_true", help=compiled.HELP)
    args = parser.parse_args()
    print(f"meshware: {compiled.build_of()}", file=sys.stderr)
    variants = [v for v in VARIANTS if v.group == "main" or (v.group == "extra" and args.extras)]
    if args.only:
        wanted = {"a", *args.only.split(",")}
        variants = [v for v in VARIANTS if v.key in wanted]
    bench = Bench(args, variants)
    bench.run()
    report = bench.report()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    setup = report["setup"]
    print(
        f"\ninbound, {setup['rounds']} rounds x {setup['duration_s']:g} s per variant, "
        f"wrk -t1 -c{setup['connections']} on cpu {setup['wrk_cpus']}, "
        f"uvicorn ({setup['uvicorn_http']}, {setup['uvicorn_loop']}) on cpu "
        f"{setup['server_cpus']}, cpus={setup['cpus']}, Python {setup['python']}; "
        "medians over rounds, ratios paired by round"
    )
    for note in report["notes"]:
        print(note)
    print(
        "| variant | req/s | vs a | p50 | p99 | server CPU µs/req | added CPU µs/req | "
        "req/s per server core (CPU-bound) | vs a | server core busy | repeats | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["variants"].values():
        print(
            f"| {r['label']} | {r['rps']:,.0f} | {r['throughput_ratio']:.1%} | "
            f"{r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms | "
            f"{r['cpu_us_per_request']:.0f} | {r['added_cpu_us_per_request']:+.0f} | "
            f"{r['cpu_capacity_rps']:,.0f} | {r['cpu_capacity_ratio']:.1%} | "
            f"{r['server_busy']:.0%} | {r['repeats']} | {r['errors']} |"
        )
    for r in report["variants"].values():
        if "spans_per_request" in r:
            print(f"{r['label']}: {r['spans_per_request']:.3f} spans exported per request")
    if report["variants"]["a"]["instructions_per_request"]:
        print("\nserver instructions per request (user space, all threads, perf stat; median):")
        for r in report["variants"].values():
            added = r.get("added_instructions_per_request")
            print(
                f"  {r['label']}: {r['instructions_per_request']:,.0f}"
                + (f" ({added:+,.0f} vs a)" if added is not None and r is not a_of(report) else "")
            )
    target = report["target"]
    if target is None:
        return
    verdict = "HOLDS" if target["holds"] else "MISSED"
    print(
        f"\ntarget (b >= 85 % of a's throughput, and b beats c): {verdict}: "
        f"b/a = {target['b_over_a']:.1%} (per round: "
        f"{', '.join(f'{x:.0%}' for x in target['b_over_a_per_round'])}), "
        f"b/c = {target['b_over_c']:.2f}"
    )
    print(
        f"by server CPU per request: b/a = {target['b_over_a_cpu']:.1%}, "
        f"b/c = {target['b_over_c_cpu']:.2f}: {'holds' if target['holds_cpu'] else 'missed'}"
    )


if __name__ == "__main__":
    main()
