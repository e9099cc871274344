"""The steps of ``meshware demo``: Istio's Bookinfo traffic tasks, on live services.

Every step applies a manifest from ``examples/bookinfo/manifests`` through the control plane
(as ``meshware apply`` does), waits until every instance ACKed it, drives traffic at productpage
while a live table counts which reviews version answered, and checks the split against the
weights of the route each kind of user matches. The expected split is computed from the
manifest by meshware's own route table, so what is checked is what was applied.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from rich.console import Console
from rich.live import Live

from meshware.config.parse import load_files
from meshware.config.record import canonical_json, digest_documents
from meshware.config.registry import InstanceStatus, list_instances
from meshware.config.store import ConfigStore
from meshware.config.watch import compile_documents
from meshware.demo.services import Service
from meshware.demo.traffic import Audience, Tally, drive, sample_request
from meshware.demo.view import split_line, split_table
from meshware.errors import MeshwareError
from meshware.routing.request import RequestInfo
from meshware.routing.table import RouteTable

__all__ = ["STEPS", "Step", "Tour"]

JASON = {"end-user": "jason"}


@dataclass(frozen=True, slots=True)
class Step:
    """Apply ``manifest``, explain it in one line, then send traffic as ``users``."""

    manifest: str
    title: str
    explanation: str
    users: tuple[tuple[str, dict[str, str], int], ...] = ()  # (label, headers, share)
    also: tuple[str, ...] = ()
    """More manifests applied in the same version."""


STEPS: tuple[Step, ...] = (
    Step(
        "destination-rule-all.yaml",
        "DestinationRules and access logs",
        "Subsets v1, v2, v3 name each service's instances by their version label; "
        "nothing moves until a VirtualService routes to them. A mesh-wide Telemetry turns "
        "access logs on: one JSON line per request in each service's log.",
        also=("telemetry-access-logging.yaml",),
    ),
    Step(
        "virtual-service-reviews-90-10.yaml",
        "canary 90/10",
        "A canary: productpage's mesh client sends 10% of its reviews calls to v2 "
        "(black stars) and 90% to v1, choosing per request.",
        (("everyone", {}, 1),),
    ),
    Step(
        "virtual-service-reviews-50-v3.yaml",
        "shift 50/50",
        "The weights move to v1 50%, v3 50% (red stars): every instance swapped its route "
        "table in place, with no restart and no dropped request.",
        (("everyone", {}, 1),),
    ),
    Step(
        "virtual-service-reviews-jason-v2-v3.yaml",
        "jason → v2",
        "A/B by header: requests with end-user: jason go to v2, everyone else to v3; "
        "productpage forwards end-user, the mesh carries the trace context.",
        (("jason", JASON, 1), ("everyone else", {}, 3)),
    ),
)


@dataclass
class Tour:
    """Runs :data:`STEPS` against running services; collects whether every split matched."""

    console: Console
    store: ConfigStore
    manifests: Path
    services: Sequence[Service]
    requests: int = 600
    concurrency: int = 8
    sync_timeout: float = 15.0
    check_alive: Callable[[], None] = lambda: None
    trace_viewer: str | None = None
    """A URL prefix that opens a trace by id (Jaeger's ``.../trace/``), if spans are exported."""
    mismatches: list[str] = field(default_factory=list)

    @property
    def productpage(self) -> str:
        port = next(s.port for s in self.services if s.service == "productpage")
        return f"http://127.0.0.1:{port}/productpage"

    # -- waiting for the mesh --------------------------------------------------------------

    def _instances(self) -> list[InstanceStatus]:
        head = self.store.head()
        ours = {(s.service, s.version) for s in self.services}
        return [
            s
            for s in list_instances(self.store.client, self.store.keys, head, url=self.store.url)
            if (s.record.service, s.record.version) in ours and not s.record.draining
        ]

    def wait_state(self, state: str) -> float:
        """Wait until every service has a live instance and all are in ``state``; ms taken."""
        start = time.perf_counter()
        deadline = time.monotonic() + self.sync_timeout
        while True:
            self.check_alive()
            instances = self._instances()
            if len(instances) >= len(self.services) and all(s.state == state for s in instances):
                return (time.perf_counter() - start) * 1000
            if time.monotonic() > deadline:
                lagging = [
                    f"{s.record.service} {s.record.version}: {s.state} {s.reason}".strip()
                    for s in instances
                    if s.state != state
                ]
                missing = len(self.services) - len(instances)
                detail = "; ".join(lagging + ([f"{missing} not registered"] if missing else []))
                raise MeshwareError(
                    f"instances not {state} within {self.sync_timeout:g}s: {detail}"
                )
            time.sleep(0.01)

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until productpage answers with details and reviews (discovery is complete)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                page = httpx.get(self.productpage, timeout=2).json()
                reviews, details = page.get("reviews", {}), page.get("details", {})
                if "served_by" in reviews and "error" not in details:
                    return
                last = f"reviews: {reviews.get('error')}, details: {details.get('error')}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise MeshwareError(f"productpage did not serve a full page within {timeout:g}s ({last})")

    # -- steps -----------------------------------------------------------------------------

    def audiences(self, step: Step) -> tuple[Audience, ...]:
        """Each kind of user and the split its matching route promises, per the manifests."""
        current = self.store.current()
        table = RouteTable.compile(compile_documents(current.documents if current else (), "redis"))
        result = []
        for label, headers, share in step.users:
            request = RequestInfo(method="GET", host="reviews", path="/reviews/0", headers=headers)
            decision = table.decide(request, random.Random(0))
            expected: dict[str, int] = {}
            if decision is not None and decision.route is not None:
                for d in decision.route.route:
                    expected[d.destination.subset] = (
                        expected.get(d.destination.subset, 0) + d.weight
                    )
            result.append(Audience(label, expected, headers, share))
        return tuple(result)

    def apply(self, number: int, step: Step) -> None:
        names = (step.manifest, *step.also)
        files = " ".join(f"-f {name}" for name in names)
        self.console.print(
            f"\n[bold cyan]Step {number}[/] [bold]{step.title}[/]   meshware apply {files}",
            highlight=False,
        )
        self.console.print(f"  {step.explanation}", highlight=False, style="dim")
        paths = [self.manifests / name for name in names]
        result = self.store.apply(load_files(paths), actor="meshware demo")
        version = result.record.version if result.record else self.store.head().version  # type: ignore[union-attr]
        ms = self.wait_state("SYNCED")
        self.console.print(
            f"  config v{version}: all {len(self.services)} instances ACKed it in {ms:.0f} ms",
            highlight=False,
        )

    def traffic(self, audiences: Sequence[Audience], requests: int) -> None:
        tally = Tally()
        with Live(
            get_renderable=lambda: split_table(audiences, tally, requests),
            console=self.console,
            refresh_per_second=8,
        ):
            asyncio.run(
                drive(
                    self.productpage,
                    audiences,
                    requests,
                    tally,
                    concurrency=self.concurrency,
                )
            )
        if not self.console.is_terminal:
            self.console.line()  # a terminal's Live ends its last line; a file's does not
        for audience in audiences:
            line, ok = split_line(audience, tally)
            mark = "[green]✓ matches the weights[/]" if ok else "[bold red]✗ does NOT match[/]"
            self.console.print(f"  {line}  {mark}", highlight=False)
            if not ok:
                self.mismatches.append(line)

    def sample(self, audience: Audience) -> None:
        """One traced request, and how its trace context travelled."""
        sample = sample_request(self.productpage, audience.headers)
        hops = f"productpage → {sample.served_by}" + (
            " → ratings" if sample.ratings_traceparent else ""
        )
        carried = [
            sample.productpage_trace == sample.trace_id,
            sample.reviews_trace == sample.trace_id,
        ]
        detail = ""
        if sample.ratings_traceparent:
            _, trace, parent, _ = sample.ratings_traceparent.split("-")
            carried.append(trace == sample.trace_id and parent != sample.parent_id)
            detail = f"; ratings' parent span {parent} is reviews' own"
        if sample.ratings_baggage:
            detail += f", baggage '{sample.ratings_baggage}' reached it"
        verdict = (
            f"[green]every hop ({len(carried)}) continued the trace[/]{detail}"
            if all(carried)
            else "[bold red]the trace was broken on the way[/]"
        )
        self.console.print(
            f"  sample request ({audience.label}): trace {sample.trace_id}  {hops}: {verdict}",
            highlight=False,
        )
        if self.trace_viewer:
            self.console.print(f"  view it: {self.trace_viewer}{sample.trace_id}", highlight=False)
        if not all(carried):
            self.mismatches.append(f"trace {sample.trace_id} was not propagated")

    def run(self) -> None:
        for number, step in enumerate(STEPS, start=1):
            self.apply(number, step)
            if step.users:
                audiences = self.audiences(step)
                self.traffic(audiences, self.requests)
                self.sample(audiences[0])
        self.bad_config(len(STEPS) + 1)

    def bad_config(self, number: int) -> None:
        """A forged version written straight into Redis: NACKed, traffic unaffected, rolled back."""
        self.console.print(
            f"\n[bold cyan]Step {number}[/] [bold]a forged config[/]   written straight into "
            "Redis, bypassing meshware apply",
            highlight=False,
        )
        self.console.print(
            "  Someone with write access to Redis reroutes everyone else to reviews v1: a valid "
            "route, but not signed by the operator's key. Every instance checks the signature "
            "first, NACKs it and keeps serving the last good version; a signed meshware rollback "
            "then restores it.",
            highlight=False,
            style="dim",
        )
        good = self.store.head()
        assert good is not None
        audiences = self.audiences(STEPS[-1])  # what the last good version promises
        client = redis.Redis.from_url(self.store.url, decode_responses=True)
        try:
            docs = json.loads(str(client.hget(self.store.keys.config, "documents") or "[]"))
            for doc in docs:
                if doc.get("kind") == "VirtualService" and doc["metadata"]["name"] == "reviews":
                    doc["spec"]["http"][-1]["route"][0]["destination"]["subset"] = "v1"
            bad = good.version + 1
            digest = digest_documents(docs)  # a careful forger keeps the hash consistent
            client.hset(
                self.store.keys.config,
                mapping={"version": str(bad), "documents": canonical_json(docs), "digest": digest},
            )
            client.publish(
                self.store.keys.events,
                canonical_json({"epoch": good.epoch, "version": bad, "digest": digest}),
            )
        finally:
            client.close()
        ms = self.wait_state("NACK")
        reason = next((s.reason for s in self._instances() if s.reason), "")
        self.console.print(
            f"  config v{bad}: all {len(self.services)} instances NACKed it in {ms:.0f} ms: {reason}",
            highlight=False,
            markup=False,
        )
        self.traffic(audiences, max(self.requests // 3, 60))
        result = self.store.rollback(actor="meshware demo")
        version = result.record.version if result.record else bad
        ms = self.wait_state("SYNCED")
        self.console.print(
            f"  meshware rollback → config v{version} (a copy of v{good.version}): "
            f"all instances SYNCED in {ms:.0f} ms",
            highlight=False,
        )
