"""The mesh's own CPU per call, both sides, with the network taken out.

``bench/outbound.py`` and ``bench/inbound.py`` measure the mesh in real processes over real
sockets, where the kernel, h11 and uvicorn cost milliseconds per request and machine noise
moves a baseline by more than the mesh costs. This bench isolates the mesh's share, in one
process, with baselines measured in the same run:

* **caller**: ``client.get("http://reviews/")`` through the mesh client (3-way weighted route,
  retries, outlier detection, golden metrics, the request context's propagation headers)
  against raw ``httpx`` getting ``http://127.0.0.1:<port>/``. Both speak h11 over the same
  in-memory network backend (an httpcore ``AsyncNetworkBackend`` that answers every request
  with a canned response at once), so the difference is what the mesh adds in the caller;
* **server**: ``MeshMiddleware`` around a minimal ASGI app against the bare app, called with
  the scope a server builds from the request the mesh client really sent (its trace,
  request id and peer-metadata headers), so the difference is what the mesh adds in the
  callee.

Calls are made inside a request context whose sampled flag is set on 0 %, 1 % or 100 % of
them; sampled spans go through the real span processor and OTLP/HTTP exporter to a sink.
Variants are interleaved in blocks of ``--block`` calls; each block's CPU time gives a
per-call figure, and the report takes the median over blocks and the difference to the
baseline of the same round. The CPU time counted is the calling thread's plus the span
exporters' threads' (where sampled spans are encoded and sent): the per-request work. The
process's CPU time is reported too, but it also holds the background loops of the five
meshes this bench runs and the OTLP sink's server, which add noise of tens of µs per call
without depending on the calls; per-thread instruction counts are the steadiest figure.

Run: ``python bench/hotpath.py [--blocks 40] [--block 250]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpcore
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import compiled  # noqa: E402

compiled.prefer_compiled()

from bench.inbound import OtlpSink  # noqa: E402
from bench.outbound import REVIEWS, discovered, reviews_meshes  # noqa: E402
from bench.perfcount import instruction_counter  # noqa: E402
from meshware import Mesh  # noqa: E402
from meshware.embedded_redis import RedisServer  # noqa: E402
from meshware.middleware.asgi import MeshMiddleware  # noqa: E402
from meshware.middleware.context import current_context, from_headers  # noqa: E402

SHARES = (0, 1, 100)
BODY = b"Hello, world!"


class CannedStream(httpcore.AsyncNetworkStream):
    """A connection whose peer answers each complete request at once with ``response``."""

    def __init__(self, response: bytes, sent: list[bytes]) -> None:
        self._response = response
        self._sent = sent
        self._pending = b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._sent[:] = [buffer]
            self._pending = self._response

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def aclose(self) -> None:
        self._pending = b""

    def get_extra_info(self, info: str) -> Any:
        return False if info == "is_readable" else None


class CannedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.sent: list[bytes] = [b""]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return CannedStream(self.response, self.sent)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def canned_response(extra: list[tuple[bytes, bytes]]) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"content-type: text/plain", b"content-length: 13"]
    head += [name + b": " + value for name, value in extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + BODY


Call = Callable[[], Awaitable[None]]
Scope = MutableMapping[str, Any]


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    """The smallest well-behaved ASGI app (what bench/hello_app.py does, without Starlette)."""
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def scope_of(request: bytes) -> Scope:
    """The ASGI scope uvicorn builds for ``request`` (names lower-cased, as h11 gives them)."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    method, target, _ = head[0].split(b" ")
    headers = [
        (name.strip().lower(), value.strip())
        for name, value in (line.split(b":", 1) for line in head[1:])
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.decode(),
        "scheme": "http",
        "path": target.decode(),
        "raw_path": target,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


def in_context(share: int, call: Callable[[], Awaitable[Any]]) -> Call:
    """``call`` made inside a fresh request context (one per call, as when every inbound
    request makes one outbound call), sampled on ``share`` % of the calls."""
    headers = [
        {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
        {"traceparent": f"00-{'ef' * 16}-{'12' * 8}-00"},
    ]
    counter = iter(range(10**12))

    async def run() -> None:
        context = from_headers(headers[0] if next(counter) % 100 < share else headers[1])
        token = current_context.set(context)
        try:
            await call()
        finally:
            current_context.reset(token)

    return run


def asgi_call(app: Any, scope: Scope) -> Call:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        return None

    async def run() -> None:
        await app(dict(scope, headers=list(scope["headers"])), receive, send)

    return run


EXPORTER_THREAD = "OtelBatchSpanRecordProcessor"
"""The name of the OpenTelemetry SDK's span export thread (one per mesh)."""


def request_clocks() -> list[int]:
    """CPU clocks of the threads doing per-request work: this one and the span exporters."""
    clocks = [time.pthread_getcpuclockid(threading.get_ident())]
    for thread in threading.enumerate():
        if thread.name == EXPORTER_THREAD and thread.ident is not None:
            clocks.append(time.pthread_getcpuclockid(thread.ident))
    return clocks


def cpu_ns(clocks: list[int]) -> int:
    return sum(time.clock_gettime_ns(clock) for clock in clocks)


Figures = dict[str, list[float]]


async def measure(
    variants: dict[str, Call], blocks: int, block: int
) -> tuple[Figures, Figures, Figures]:
    """Per call of each block: CPU µs of the request threads, CPU µs of the process and
    instructions (of this thread, when counters are available); variants interleaved block
    by block."""
    for call in variants.values():  # warm up
        for _ in range(block):
            await call()
    counter = instruction_counter()
    clocks = request_clocks()
    cpu: Figures = {name: [] for name in variants}
    process: Figures = {name: [] for name in variants}
    instructions: Figures = {name: [] for name in variants}
    items = list(variants.items())
    for round_ in range(blocks):
        order = items if round_ % 2 == 0 else items[::-1]
        for name, call in order:
            first = counter.read() if counter is not None else 0
            start, whole = cpu_ns(clocks), time.process_time_ns()
            for _ in range(block):
                await call()
            cpu[name].append((cpu_ns(clocks) - start) / 1000 / block)
            process[name].append((time.process_time_ns() - whole) / 1000 / block)
            if counter is not None:
                instructions[name].append((counter.read() - first) / block)
    if counter is not None:
        counter.close()
    return cpu, process, instructions


async def profile(variants: dict[str, Call], args: argparse.Namespace) -> None:
    """cProfile ``args.profile`` (a variant's name) and print where its time goes."""
    call = variants[args.profile]
    for _ in range(args.block):
        await call()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.blocks * args.block):
        await call()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats(args.sort).print_stats(args.top)


def added(cpu: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of (variant - baseline) in the same round."""
    return statistics.median(a - b for a, b in zip(cpu[name], cpu[baseline], strict=True))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sink = OtlpSink()
    meshes: list[Mesh] = []
    original_init = httpcore.AsyncConnectionPool.__init__
    try:
        with RedisServer() as redis_server, tempfile.TemporaryDirectory() as state:
            meshes += reviews_meshes(redis_server.url, state, "127.0.0.1:9", sink.url)
            caller = Mesh(
                "productpage",
                "v1",
                redis_url=redis_server.url,
                state_dir=state,
                otlp_endpoint=sink.url,
            ).start()
            meshes.append(caller)
            await discovered(caller, {REVIEWS: 3})
            server = meshes[0]
            reply = server.metrics.inbound.response_header
            backend = CannedBackend(canned_response([reply]))

            def patched(self: httpcore.AsyncConnectionPool, *a: Any, **kw: Any) -> None:
                kw.setdefault("network_backend", backend)
                original_init(self, *a, **kw)

            httpcore.AsyncConnectionPool.__init__ = patched  # type: ignore[method-assign]
            async with httpx.AsyncClient() as raw, caller.async_client() as mesh_client:
                caller_variants: dict[str, Call] = {
                    "raw httpx": in_context(0, lambda: raw.get("http://127.0.0.1:9/")),
                    **{
                        f"mesh client, {share} %": in_context(
                            share, lambda: mesh_client.get("http://reviews/")
                        )
                        for share in SHARES
                    },
                }
                await in_context(0, lambda: mesh_client.get("http://reviews/"))()
                scope = scope_of(backend.sent[0])
                middleware = MeshMiddleware(hello, mesh=server)
                traced = {share: _with_flag(scope, share) for share in SHARES}
                server_variants: dict[str, Call] = {
                    "bare app": asgi_call(hello, scope),
                    **{
                        f"MeshMiddleware, {share} %": _rotating(middleware, traced[share])
                        for share in SHARES
                    },
                }
                if args.profile:
                    await profile({**caller_variants, **server_variants}, args)
                    return {}
                caller_cpu, caller_process, caller_ins = await measure(
                    caller_variants, args.blocks, args.block
                )
                server_cpu, server_process, server_ins = await measure(
                    server_variants, args.blocks, args.block
                )
            sent_headers = [name.decode() for name, _ in scope["headers"]]
    finally:
        httpcore.AsyncConnectionPool.__init__ = original_init  # type: ignore[method-assign]
        for mesh in meshes:
            mesh.stop()
        sink.close()
    report: dict[str, Any] = {"request_headers": sent_headers, "shares": {}}
    for share in SHARES:
        client = added(caller_cpu, f"mesh client, {share} %", "raw httpx")
        server_added = added(server_cpu, f"MeshMiddleware, {share} %", "bare app")
        row = report["shares"][share] = {
            "caller_added_us": client,
            "server_added_us": server_added,
            "both_sides_us": client + server_added,
            "both_sides_process_us": added(caller_process, f"mesh client, {share} %", "raw httpx")
            + added(server_process, f"MeshMiddleware, {share} %", "bare app"),
        }
        if caller_ins["raw httpx"]:
            row["caller_added_instructions"] = added(
                caller_ins, f"mesh client, {share} %", "raw httpx"
            )
            row["server_added_instructions"] = added(
                server_ins, f"MeshMiddleware, {share} %", "bare app"
            )
    report["baselines"] = {
        "raw httpx us": statistics.median(caller_cpu["raw httpx"]),
        "bare app us": statistics.median(server_cpu["bare app"]),
    }
    if caller_ins["raw httpx"]:
        report["baselines"]["raw httpx instructions"] = statistics.median(caller_ins["raw httpx"])
        report["baselines"]["bare app instructions"] = statistics.median(server_ins["bare app"])
    return report


def _with_flag(scope: Scope, share: int) -> list[Scope]:
    """100 scopes whose ``traceparent`` is sampled in ``share`` of them."""
    scopes = []
    for i in range(100):
        flag = b"01" if i < share else b"00"
        headers = [
            (name, value[:-2] + flag if name == b"traceparent" else value)
            for name, value in scope["headers"]
        ]
        scopes.append(dict(scope, headers=headers))
    return scopes


def _rotating(app: Any, scopes: list[Scope]) -> Call:
    calls = [asgi_call(app, scope) for scope in scopes]
    counter = iter(range(10**12))

    async def run() -> None:
        await calls[next(counter) % len(calls)]()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=40, help="rounds of blocks per variant")
    parser.add_argument("--block", type=int, default=250, help="calls per block")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="VARIANT", help="cProfile one variant instead")
    parser.add_argument("--sort", default="tottime", help="pstats sort key for --profile")
    parser.add_argument("--top", type=int, default=40, help="rows printed by --profile")
    parser.add_argument(compiled.FLAG, action="store_true", help=compiled.HELP)
    args = parser.parse_args()
    print(f"meshware: {compiled.build_of()}", file=sys.stderr)
    report = asyncio.run(run(args))
    if args.profile:
        return
    if args.json:
        print(json.dumps(report, indent=2))
        return
    base = report["baselines"]
    print(
        f"calls per variant: {args.blocks * args.block}; request headers: {report['request_headers']}"
    )
    print(
        f"baselines: raw httpx {base['raw httpx us']:.1f} µs, bare app {base['bare app us']:.1f} µs"
    )
    counted = "caller_added_instructions" in report["shares"][0]
    if counted:
        print(
            f"instructions per call: raw httpx {base['raw httpx instructions']:,.0f}, "
            f"bare app {base['bare app instructions']:,.0f}"
        )
    print("CPU: the request threads' (calling thread and span exporters); process: all threads")
    print(
        "| sampled | caller added | server added | both sides | both sides, process CPU |"
        + (" caller added instructions | server added instructions |" if counted else "")
    )
    print("|---:|---:|---:|---:|---:|" + ("---:|---:|" if counted else ""))
    for share, row in report["shares"].items():
        line = (
            f"| {share} % | {row['caller_added_us']:+.1f} µs | {row['server_added_us']:+.1f} µs | "
            f"**{row['both_sides_us']:+.1f} µs** | {row['both_sides_process_us']:+.1f} µs |"
        )
        if counted:
            line += (
                f" {row['caller_added_instructions']:+,.0f} |"
                f" {row['server_added_instructions']:+,.0f} |"
            )
        print(line)


if __name__ == "__main__":
    main()
