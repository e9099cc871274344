"""``MeshMetrics``: one instance's golden metrics, and the background work that ships them.

It owns the :class:`~meshware.telemetry.metrics.Registry` of the instance, the meters the
middleware and the mesh client record with, and one background task (run on the mesh's own
loop, never on the request path) that about once a second

* writes this process's snapshot for the other workers of a multi-process server
  (:mod:`meshware.telemetry.multiproc`, when ``MESHWARE_METRICS_DIR`` is set), and
* flushes per-window deltas to the mesh-wide aggregates in Redis
  (:mod:`meshware.telemetry.aggregates`, when the mesh has a Redis control plane).

Both are done once more when the mesh stops. :meth:`samples` is what ``/metrics`` exposes:
this process's live series plus every other worker's snapshot. With OTLP push on,
:attr:`MeshMetrics.pusher` also pushes this process's own series from a thread of its own
(:mod:`meshware.telemetry.otlp_metrics`); the mesh starts it after the fork and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
from opentelemetry.sdk.resources import Resource

from meshware.config.connection import async_client
from meshware.config.keys import Keys
from meshware.errors import ControlPlaneError
from meshware.telemetry.aggregates import AggregateFlusher, AsyncRedis
from meshware.telemetry.exposition import render
from meshware.telemetry.meters import InboundMeter, OutboundMeter
from meshware.telemetry.metrics import Registry, Sample, merge
from meshware.telemetry.multiproc import SnapshotDir
from meshware.telemetry.otlp_metrics import MetricsPusher
from meshware.telemetry.overrides import NONE, MetricsOverrides
from meshware.telemetry.peers import Workload

__all__ = ["FLUSH_INTERVAL", "MeshMetrics"]

log = logging.getLogger("meshware.metrics")

FLUSH_INTERVAL = 1.0
"""Seconds between snapshot writes and aggregate flushes."""


class MeshMetrics:
    """See the module docstring."""

    def __init__(
        self,
        own: Workload,
        service_host: str,
        identity: Callable[[], str | None],
        keys: Keys,
        *,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = Registry()
        self.created_ns = time.time_ns()
        self.own = own
        self.inbound = InboundMeter(self.registry, own, service_host, identity)
        self.outbound = OutboundMeter(self.registry, own, identity)
        self.aggregates = AggregateFlusher(keys)
        self.snapshots: SnapshotDir | None = None
        """The shared directory of a multi-process server (set by :meth:`attach`)."""
        self._ready = ready
        self.pusher: MetricsPusher | None = None
        """Pushes this process's series over OTLP, when on (set by :meth:`push_over_otlp`)."""
        self._overrides: MetricsOverrides = NONE

    @property
    def overrides(self) -> MetricsOverrides:
        """The workload's ``Telemetry`` metric overrides (set on every config change): they
        shape ``/metrics`` and the OTLP push, and give the meters the tags to evaluate per
        request."""
        return self._overrides

    @overrides.setter
    def overrides(self, overrides: MetricsOverrides) -> None:
        self._overrides = overrides
        self.inbound.tags = overrides.inbound
        self.outbound.tags = overrides.outbound

    def push_over_otlp(
        self,
        resource: Resource,
        exporter: Callable[[], MetricExporter],
        *,
        interval: float,
        timeout: float,
        temporality: AggregationTemporality,
    ) -> MetricsPusher:
        """Push this process's own series (never the other workers') every ``interval`` s,
        once :attr:`pusher` is started."""
        self.pusher = MetricsPusher(
            self.registry.snapshot,
            resource,
            exporter,
            interval=interval,
            timeout=timeout,
            temporality=temporality,
            start_ns=self.created_ns,
            overrides=lambda: self.overrides,
        )
        return self.pusher

    def attach(self, snapshots: SnapshotDir | None) -> None:
        """Share this process's series through ``snapshots`` (once, after the fork)."""
        if self.snapshots is None:
            self.snapshots = snapshots

    def exposition(self) -> str:
        """``/metrics``: :meth:`samples` in Prometheus' text format, shaped by the overrides."""
        return render(self.samples(), self.overrides)

    def samples(self) -> list[Sample]:
        """What ``/metrics`` shows: live series, plus the other workers' when shared."""
        own = self.registry.snapshot()
        snapshots = self.snapshots
        if snapshots is None:
            return own
        return merge([snapshots.others(), own])

    def write_snapshot(self, samples: list[Sample] | None = None) -> None:
        """Share this process's series now (no-op without a shared directory)."""
        snapshots = self.snapshots
        if snapshots is not None:
            samples = self.registry.snapshot() if samples is None else samples
            snapshots.write(samples, ready=self._ready())

    async def run(self, redis_url: str | None, interval: float = FLUSH_INTERVAL) -> None:
        """The background task: snapshot and flush every ``interval`` s until cancelled,
        then once more."""
        client: AsyncRedis | None = None
        if redis_url:
            try:
                client = async_client(redis_url, timeout=2.0)
            except ControlPlaneError as exc:
                log.warning("metrics aggregates disabled: %s", exc)
        try:
            while True:
                await asyncio.sleep(interval)
                await self._tick(client)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tick(client), timeout=2.0)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _tick(self, client: AsyncRedis | None) -> None:
        samples = self.registry.snapshot()
        self.write_snapshot(samples)
        if client is not None:
            self.aggregates.collect(samples, time.time())
            await self.aggregates.flush(client)
