"""Config propagation: ``apply`` → every instance ACKed, with 20 and 50 instances.

One run, one embedded Redis. For each instance count it measures, over ``--applies`` config
changes (a reviews VirtualService whose weights change every time):

* **mesh**: time from calling ``ConfigStore.apply`` (validation, the Redis transaction and
  the change event included) until the last instance has validated the new version,
  swapped its snapshot and published its ACK;
* **baseline**: the floor any Redis-based channel pays in the same setup: PUBLISH to the
  same number of raw asyncio subscribers (threads or processes, as the instances) that answer
  at once on another channel, with no validation and no state.

Instances are in-process (one thread, event loop and pair of Redis connections each, like
separate processes would hold) or real processes with ``--processes``.

    python bench/propagation.py                 # 20 and 50 in-process instances, 100 applies
    python bench/propagation.py --processes     # the same with one OS process per instance
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshware import Mesh  # noqa: E402
from meshware.config.parse import Document  # noqa: E402
from meshware.config.store import ConfigStore  # noqa: E402
from meshware.embedded_redis import RedisServer  # noqa: E402

DESTINATION_RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "reviews"},
    "spec": {
        "host": "reviews",
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
            {"name": "v3", "labels": {"version": "v3"}},
        ],
    },
}


def virtual_service(canary: int) -> dict[str, object]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                },
                {
                    "route": [
                        {
                            "destination": {"host": "reviews", "subset": "v1"},
                            "weight": 100 - canary,
                        },
                        {"destination": {"host": "reviews", "subset": "v3"}, "weight": canary},
                    ]
                },
            ],
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class AckCollector:
    """Subscribes to an ACK channel in a thread and records when each ACK arrives."""

    def __init__(self, url: str, channel: str, key: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.key = key
        self.arrivals: dict[object, list[float]] = {}
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            message = self.pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            now = time.perf_counter()
            data = json.loads(message["data"])
            with self.cond:
                self.arrivals.setdefault(data[self.key], []).append(now)
                self.cond.notify_all()

    def wait(self, tag: object, count: int, timeout: float = 10.0) -> list[float]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals.get(tag, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"only {len(self.arrivals.get(tag, []))}/{count} ACKs for {tag}"
                    )
                self.cond.wait(left)
            return list(self.arrivals[tag])

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.pubsub.close()
        self.client.close()


def run_mesh(
    url: str, n: int, applies: int, processes: bool, state: Path
) -> tuple[list[float], list[float]]:
    """Returns (all-ACKed latencies, per-instance ACK latencies) in milliseconds."""
    meshes: list[Mesh] = []
    procs: list[subprocess.Popen[bytes]] = []
    store = ConfigStore.from_url(url, mesh=f"bench{n}")
    store.apply([Document(DESTINATION_RULE, "bench", 1), Document(virtual_service(0), "bench", 2)])
    collector = AckCollector(url, f"meshware:bench{n}:acks", "version")
    try:
        if processes:
            code = (
                "import sys, time; from meshware import Mesh; "
                "m = Mesh('reviews', 'v1', redis_url=sys.argv[1], mesh=sys.argv[2], state_dir=sys.argv[3]).start(wait=10); "
                "print('ready', flush=True); sys.stdin.read()"
            )
            for i in range(n):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", code, url, f"bench{n}", str(state / f"p{i}")],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                proc.stdout.readline()
        else:
            for i in range(n):
                meshes.append(
                    Mesh(
                        "reviews",
                        f"v{i % 3 + 1}",
                        redis_url=url,
                        mesh=f"bench{n}",
                        state_dir=state / f"t{i}",
                    ).start(wait=10)
                )
        time.sleep(0.5)
        all_acked: list[float] = []
        each: list[float] = []
        for i in range(applies):
            docs = [Document(virtual_service((i % 99) + 1), "bench", 1)]
            start = time.perf_counter()
            result = store.apply(docs)
            assert result.record is not None
            arrivals = collector.wait(result.record.version, n)
            all_acked.append((max(arrivals) - start) * 1000)
            each.extend((t - start) * 1000 for t in arrivals)
            time.sleep(0.02)
        return all_acked, each
    finally:
        collector.close()
        for m in meshes:
            m.stop()
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        store.close()


BASELINE_SUBSCRIBER = """
import asyncio, json, sys
import redis.asyncio

async def main(url, idx):
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("baseline:events")
    print("ready", flush=True)
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None:
            seq = int(message["data"])
            await client.publish("baseline:acks", json.dumps({"seq": seq, "who": idx}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _run_baseline_processes(url: str, n: int, applies: int) -> list[float]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BASELINE_SUBSCRIBER, url, str(i)], stdout=subprocess.PIPE
        )
        for i in range(n)
    ]
    collector = AckCollector(url, "baseline:acks", "seq")
    publisher = redis.Redis.from_url(url)
    latencies: list[float] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        time.sleep(0.3)
        for seq in range(applies):
            start = time.perf_counter()
            publisher.publish("baseline:events", str(seq))
            arrivals = collector.wait(seq, n)
            latencies.append((max(arrivals) - start) * 1000)
            time.sleep(0.02)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        collector.close()
        publisher.close()
    return latencies


def run_baseline(url: str, n: int, applies: int, processes: bool) -> list[float]:
    """PUBLISH → n raw asyncio subscribers (own connections each) → their replies seen."""
    if processes:
        return _run_baseline_processes(url, n, applies)
    ready = threading.Barrier(n + 1)
    stop = threading.Event()

    def subscriber(idx: int) -> None:
        async def main() -> None:
            client = redis.asyncio.Redis.from_url(url, decode_responses=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe("baseline:events")
            ready.wait()
            while not stop.is_set():
                message = await pubsub.get_message(timeout=0.1)
                if message is not None:
                    await client.publish(
                        "baseline:acks", json.dumps({"seq": int(message["data"]), "who": idx})
                    )
            await pubsub.aclose()
            await client.aclose()

        asyncio.run(main())

    threads = [threading.Thread(target=subscriber, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    collector = AckCollector(url, "baseline:acks", "seq")
    publisher = redis.Redis.from_url(url)
    ready.wait()
    time.sleep(0.3)
    latencies: list[float] = []
    try:
        for seq in range(applies):
            start = time.perf_counter()
            publisher.publish("baseline:events", str(seq))
            arrivals = collector.wait(seq, n)
            latencies.append((max(arrivals) - start) * 1000)
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
        collector.close()
        publisher.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--applies", type=int, default=100)
    parser.add_argument("--processes", action="store_true", help="one OS process per instance")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    rows = []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        for n in args.instances:
            mesh_all, mesh_each = run_mesh(
                server.url, n, args.applies, args.processes, Path(tmp) / str(n)
            )
            base = run_baseline(server.url, n, args.applies, args.processes)
            rows.append(
                {
                    "instances": n,
                    "mode": "processes" if args.processes else "in-process",
                    "applies": args.applies,
                    "mesh_all_acked_p50_ms": statistics.median(mesh_all),
                    "mesh_all_acked_p99_ms": percentile(mesh_all, 99),
                    "mesh_per_instance_p50_ms": statistics.median(mesh_each),
                    "baseline_pubsub_p50_ms": statistics.median(base),
                    "baseline_pubsub_p99_ms": percentile(base, 99),
                    "ratio_p50": statistics.median(mesh_all) / statistics.median(base),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"apply → all ACKed ({rows[0]['mode']} instances, {args.applies} applies each, cpus={os.cpu_count()})"
    )
    print(
        "| instances | mesh p50 ms | mesh p99 ms | per-instance ACK p50 ms | raw pub/sub echo p50 / p99 ms | mesh/raw p50 |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['instances']} | {r['mesh_all_acked_p50_ms']:.1f} | {r['mesh_all_acked_p99_ms']:.1f} | "
            f"{r['mesh_per_instance_p50_ms']:.1f} | {r['baseline_pubsub_p50_ms']:.1f} / {r['baseline_pubsub_p99_ms']:.1f} | "
            f"{r['ratio_p50']:.1f}x |"
        )


if __name__ == "__main__":
    main()
