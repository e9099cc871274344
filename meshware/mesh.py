"""``Mesh``: the per-process runtime that ties config sync, registration and (later) the
data plane together.

The runtime runs in one background thread with its own asyncio loop, so it works the same
under an ASGI server, a threaded WSGI server or a plain script, and never shares an event
loop with the application. The request path only ever reads :attr:`Mesh.snapshot`, a
reference to an immutable object that the runtime replaces whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import httpx
from opentelemetry.sdk.trace.export import SpanExporter

from meshware.config.channel import FileConfigSource, RedisConfigChannel
from meshware.config.discovery import EMPTY_TABLE, EndpointTable, EndpointWatcher
from meshware.config.keys import Keys
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.networking import VirtualService
from meshware.config.registry import InstanceRecord
from meshware.config.watch import ConfigWatcher, Snapshot
from meshware.routing.table import RouteTable
from meshware.security.authz import Authorizer
from meshware.security.peer_auth import (
    InboundMode,
    MergedPeerAuthentication,
    merge_peer_authentication,
    resolve,
)
from meshware.security.signing import ConfigVerifier
from meshware.security.tls import WorkloadTLS
from meshware.settings import Settings, default_state_dir
from meshware.telemetry.access_log import AccessLog, AccessLogSink, access_log_policy
from meshware.telemetry.export import metrics_temporality, otlp_exporter, otlp_metric_exporter
from meshware.telemetry.multiproc import SnapshotDir
from meshware.telemetry.overrides import metrics_overrides
from meshware.telemetry.peers import workload_of
from meshware.telemetry.policy import tracing_percentage
from meshware.telemetry.runtime import MeshMetrics
from meshware.telemetry.tracing import DEFAULT_PERCENTAGE, Tracer
from meshware.transport.aio import AsyncMeshTransport
from meshware.transport.outbound import OutboundPolicy
from meshware.transport.sync import MeshTransport

if TYPE_CHECKING:
    from meshware.security.enroll import CertificateRenewer

log = logging.getLogger("meshware")
_HOSTNAME = socket.gethostname()


def _paths(value: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    """One path or several, as a tuple of paths."""
    if isinstance(value, str | os.PathLike):
        return (Path(value),)
    return tuple(Path(p) for p in value)


class Mesh:
    """One service instance's membership in the mesh.

    >>> mesh = Mesh(service="reviews", version="v2", redis_url="redis://localhost:6379/0")
    >>> with mesh:                       # or mesh.start() / mesh.stop(), or mesh.lifespan
    ...     mesh.snapshot.version        # the applied config version
    """

    def __init__(
        self,
        service: str,
        version: str = "v1",
        *,
        redis_url: str | None = None,
        address: str = "",
        labels: Mapping[str, str] | None = None,
        namespace: str = "default",
        mesh: str = "default",
        config_file: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        heartbeat_interval: float = 2.0,
        instance_ttl: float = 10.0,
        resync_interval: float = 5.0,
        instance_id: str | None = None,
        outbound_traffic_policy: OutboundPolicy = "ALLOW_ANY",
        discovery_interval: float = 1.0,
        otlp_endpoint: str | None = None,
        otlp_metrics: bool = False,
        trace_sampling: float = DEFAULT_PERCENTAGE,
        span_exporter: SpanExporter | None = None,
        cert_dir: str | os.PathLike[str] | None = None,
        mtls: str = "",
        trusted_keys: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] = (),
        ca_url: str | None = None,
        join_token: str | None = None,
    ) -> None:
        self.settings = Settings(
            service=service,
            version=version,
            namespace=namespace,
            redis_url=redis_url,
            mesh=mesh,
            address=address,
            labels=dict(labels or {}),
            config_file=Path(config_file) if config_file else None,
            state_dir=Path(state_dir) if state_dir else None,
            heartbeat_interval=heartbeat_interval,
            instance_ttl=instance_ttl,
            resync_interval=resync_interval,
            outbound_traffic_policy=outbound_traffic_policy,
            discovery_interval=discovery_interval,
            otlp_endpoint=otlp_endpoint,
            otlp_metrics=otlp_metrics,
            trace_sampling=trace_sampling,
            cert_dir=Path(cert_dir) if cert_dir else None,
            mtls=mtls,
            trusted_keys=_paths(trusted_keys),
            ca_url=ca_url,
            join_token=join_token,
        )
        self._init_runtime(instance_id, span_exporter)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        instance_id: str | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> Mesh:
        """A mesh for ``settings``; ``span_exporter`` replaces the OTLP exporter (tests)."""
        mesh = cls.__new__(cls)
        mesh.settings = settings
        mesh._init_runtime(instance_id, span_exporter)
        return mesh

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Mesh:
        """Build from ``MESHWARE_SERVICE``, ``MESHWARE_VERSION``, ``MESHWARE_REDIS_URL``, ...

        Keyword arguments override the environment. Raises :class:`~meshware.ConfigError`
        naming every bad variable.
        """
        return cls.from_settings(Settings.from_env(environ, **overrides))

    def _init_runtime(self, instance_id: str | None, span_exporter: SpanExporter | None) -> None:
        s = self.settings
        self.instance_id = instance_id or f"{s.service}-{s.version}-{secrets.token_hex(4)}"
        self.labels: Mapping[str, str] = s.effective_labels
        self.authorizer = Authorizer(())
        """The AuthorizationPolicies for this workload, recompiled on every config change."""
        self.tls: WorkloadTLS | None = (
            WorkloadTLS(s.cert_dir) if s.cert_dir and not s.ca_url else None
        )
        """This workload's credentials, for mutual TLS in and out (None without ``cert_dir``;
        with ``ca_url``, set by :meth:`start` once the CA service issued them)."""
        self.renewer: CertificateRenewer | None = None
        """With ``ca_url``: what keeps the credentials renewed (``renewals``, ``last_error``)."""
        self._cert_dir = s.cert_dir
        self.tracer = Tracer(
            {
                "service.name": s.service,
                "service.version": s.version,
                "service.namespace": s.namespace,
                "service.instance.id": self.instance_id,
            },
            (lambda: span_exporter)
            if span_exporter is not None
            else otlp_exporter(s.otlp_endpoint),
            percentage=s.trace_sampling,
        )
        self.keys = Keys(s.mesh)
        self.access_log = AccessLog(
            AccessLogSink(path=s.access_log if s.access_log not in (None, "-") else None)
        )
        """Access logging: off until a ``Telemetry`` resource turns it on (as in Istio)."""
        self.metrics = MeshMetrics(
            workload_of(s.service, s.version, s.namespace, self.labels),
            f"{s.service}.{s.namespace}.svc.cluster.local",
            lambda: self.tls.identity.uri if self.tls is not None else None,
            self.keys,
            ready=lambda: self.ready and not self._draining,
        )
        """Istio's golden metrics of this instance (``/metrics``, aggregates in Redis)."""
        interval, timeout = s.metric_export_timing()
        push = otlp_metric_exporter(s.otlp_endpoint, s.otlp_metrics, timeout)
        if push is not None:  # the tracer's resource: same service.instance.id
            self.metrics.push_over_otlp(
                self.tracer.resource,
                push,
                interval=interval,
                timeout=timeout,
                temporality=metrics_temporality(),
            )
        self.started_at = 0.0
        lkg = None
        if s.redis_url:
            state_dir = s.state_dir or default_state_dir()
            lkg = state_dir / s.mesh / f"{s.namespace}.{s.service}.{s.version}.json"
        self._routes = RouteTable.EMPTY
        verifier = (
            ConfigVerifier.from_paths(s.trusted_keys, mesh=s.mesh) if s.trusted_keys else None
        )
        self.watcher = ConfigWatcher(lkg_path=lkg, on_change=self._compile, verifier=verifier)
        self._endpoints: EndpointWatcher | None = None
        self._channel: RedisConfigChannel | None = None
        self._file: FileConfigSource | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._draining = False
        self._inflight: list[bool] = []
        """One item per request in flight: ``list.append``/``pop`` are atomic under the GIL,
        so counting costs no lock (a lock per request cost more than the rest of it)."""
        self._inflight_lock = threading.Lock()
        self._idle = threading.Condition(self._inflight_lock)
        self._sticky: frozenset[str] = frozenset()
        self._peer_auth = MergedPeerAuthentication()
        self._inbound_port: int | None = None
        self._inbound_lock = threading.Lock()
        self._inbound = self._resolve_inbound()

    # -- what the request path reads -----------------------------------------------------

    @property
    def service(self) -> str:
        return self.settings.service

    @property
    def version(self) -> str:
        return self.settings.version

    @property
    def snapshot(self) -> Snapshot:
        """The applied config version (immutable; replaced whole on every change)."""
        return self.watcher.snapshot

    @property
    def config(self) -> MeshConfig:
        return self.watcher.snapshot.config

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def outbound_traffic_policy(self) -> OutboundPolicy:
        return cast(OutboundPolicy, self.settings.outbound_traffic_policy)

    @property
    def route_table(self) -> RouteTable:
        """Routes compiled from the applied config (replaced whole on every change)."""
        return self._routes

    @property
    def endpoint_table(self) -> EndpointTable:
        """Live endpoints of every service, from the registry (replaced whole on change)."""
        watcher = self._endpoints
        return watcher.table if watcher is not None else EMPTY_TABLE

    @property
    def sticky_headers(self) -> frozenset[str]:
        """Header names of sticky-cohort keys in the applied config: inbound requests forward
        them to the calls they make, so a user stays in one cohort across services."""
        return self._sticky

    # -- inbound bookkeeping (graceful draining) -------------------------------------------

    @property
    def draining(self) -> bool:
        """True once shutdown began: callers are told to stop picking this instance."""
        return self._draining

    @property
    def inflight(self) -> int:
        """Inbound requests being handled now (counted by the middleware)."""
        return len(self._inflight)

    def request_started(self) -> None:
        self._inflight.append(True)

    def request_finished(self) -> None:
        self._inflight.pop()
        # Only drain() waits for idle. It sets _draining before it looks at the count, under
        # the lock, so either it sees this pop or this sees _draining and wakes it.
        if self._draining:
            with self._inflight_lock:
                if not self._inflight:
                    self._idle.notify_all()

    def drain(self, *, timeout: float = 15.0, settle: float = 0.25) -> bool:
        """Mark this instance draining, let callers notice, wait for in-flight requests.

        Callers stop picking a draining instance as soon as their endpoint watcher hears of it
        (a pub/sub hint, then a registry read: well under a second). ``settle`` covers requests
        already on their way. Returns False if requests were still running after ``timeout``.
        """
        if self._draining:
            return self._wait_idle(timeout)
        self._draining = True
        channel, loop = self._channel, self._loop
        if channel is not None and loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(channel.publish_now("draining"), loop)
            try:
                future.result(timeout=2.0)
            except Exception as exc:  # Redis down: callers learn from the TTL instead
                log.warning("could not announce draining: %s", exc)
        if self.settings.address:
            time.sleep(settle)
        return self._wait_idle(timeout)

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._inflight_lock:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "%d requests still running after %gs of draining",
                        len(self._inflight),
                        timeout,
                    )
                    return False
                self._idle.wait(left)
        return True

    def _compile(self, snapshot: Snapshot) -> None:
        self._routes = RouteTable.compile(snapshot.config)
        self._sticky = frozenset(
            sticky.name.lower()
            for vs in snapshot.config.of(VirtualService)
            if (sticky := vs.sticky) is not None and sticky.source == "header"
        )
        self._peer_auth = merge_peer_authentication(
            snapshot.config, namespace=self.namespace, labels=self.labels
        )
        self._update_inbound()
        self.authorizer = Authorizer.compile(
            snapshot.config, namespace=self.namespace, labels=self.labels
        )
        self.tracer.set_percentage(
            tracing_percentage(
                snapshot.config, self.namespace, self.labels, self.settings.trace_sampling
            )
        )
        self.access_log.policy = access_log_policy(snapshot.config, self.namespace, self.labels)
        self.metrics.overrides = metrics_overrides(snapshot.config, self.namespace, self.labels)

    # -- inbound mutual TLS (PeerAuthentication) -------------------------------------------

    @property
    def inbound_mtls(self) -> InboundMode:
        """The inbound mutual TLS mode now: ``mode`` is STRICT, PERMISSIVE or DISABLE.

        Recompiled on every config change from the ``PeerAuthentication`` resources (unless
        ``mtls=`` / ``MESHWARE_MTLS`` overrides them), for the port this instance serves on;
        a plain attribute read, so the server asks it at every new connection.
        """
        return self._inbound

    @property
    def advertises_mtls(self) -> bool:
        """What the registry record says callers may use: mutual TLS is accepted (STRICT or
        PERMISSIVE, with credentials) by a server that enforces the mode, i.e. meshware's own
        (see :meth:`serve_inbound`) or, with an explicit ``mtls=``, the caller's word for it."""
        served = self._inbound_port is not None or bool(self.settings.mtls)
        return served and self._inbound.accepts_mtls

    def serve_inbound(self, port: int) -> None:
        """Called by the server that enforces :attr:`inbound_mtls` (``meshware serve``) with
        the port it listens on: ``portLevelMtls`` for that port applies, and the instance
        advertises mutual TLS when it accepts it."""
        self._inbound_port = port
        self._update_inbound(serving=True)

    def _serving_port(self) -> int | None:
        if self._inbound_port is not None:
            return self._inbound_port
        _, sep, port = self.settings.address.rpartition(":")
        return int(port) if sep and port.isdigit() else None

    def _resolve_inbound(self) -> InboundMode:
        return resolve(
            self._peer_auth,
            port=self._serving_port(),
            credentials=self.tls is not None,
            override=self.settings.mtls,
        )

    def _update_inbound(self, *, serving: bool = False) -> None:
        with self._inbound_lock:
            before, advertised = self._inbound, self.advertises_mtls
            self._inbound = after = self._resolve_inbound()
        loud = after.refuses_everything and self._inbound_port is not None
        if loud and (serving or before != after):  # fail closed: say so where it is seen
            log.error("inbound mTLS for %s: %s", self.instance_id, after)
        elif after.mode != before.mode:
            log.info("inbound mTLS for %s: %s", self.instance_id, after)
        channel, loop = self._channel, self._loop
        changed = self.advertises_mtls != advertised
        if changed and channel is not None and loop is not None and loop.is_running():
            # tell callers now, not at the next heartbeat
            asyncio.run_coroutine_threadsafe(channel.publish_now("mtls"), loop)

    @property
    def admin_app(self) -> Any:
        """An ASGI app with ``/healthz``, ``/readyz``, ``/config_dump`` and ``/metrics``
        (Envoy's admin, in short). Serve it on its own port or mount it yourself; it is never
        added to your app."""
        from meshware.admin import build_admin_app

        return build_admin_app(self)

    # -- outbound clients ----------------------------------------------------------------

    def transport(self, **options: Any) -> MeshTransport:
        """A synchronous mesh transport, for building your own ``httpx.Client``."""
        return MeshTransport(self, **options)

    def async_transport(self, **options: Any) -> AsyncMeshTransport:
        """An asyncio mesh transport, for building your own ``httpx.AsyncClient``."""
        return AsyncMeshTransport(self, **options)

    def client(self, **httpx_options: Any) -> httpx.Client:
        """An ``httpx.Client`` whose requests to mesh services are routed by the mesh.

        Create one per process (or per thread pool) and reuse it: it holds one connection
        pool per endpoint. Safe to share across the threads of a WSGI server.
        """
        return httpx.Client(transport=self.transport(), **httpx_options)

    def async_client(self, **httpx_options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose requests to mesh services are routed by the mesh."""
        return httpx.AsyncClient(transport=self.async_transport(), **httpx_options)

    @property
    def ready(self) -> bool:
        """True once a config is loaded, or the control plane confirmed there is none yet."""
        if self.watcher.snapshot.loaded:
            return True
        channel = self._channel
        return channel is not None and channel.synced_once.is_set()

    @property
    def connected(self) -> bool:
        channel = self._channel
        return channel is not None and channel.connected.is_set()

    def record(self) -> InstanceRecord:
        """This instance's registry record, as published on every heartbeat."""
        s = self.settings
        snap = self.watcher.snapshot
        nack = self.watcher.nack
        return InstanceRecord(
            instance=self.instance_id,
            service=s.service,
            version=s.version,
            namespace=s.namespace,
            address=s.address,
            labels=self.labels,
            pid=os.getpid(),
            hostname=_HOSTNAME,
            started_at=self.started_at,
            ttl=s.instance_ttl,
            config_epoch=snap.epoch if snap.source in ("redis", "disk") else "",
            config_version=snap.version if snap.source in ("redis", "disk") else 0,
            config_digest=snap.digest,
            config_source=snap.source,
            nack_epoch=nack.epoch if nack else "",
            nack_version=nack.version if nack else 0,
            nack_reason=nack.reason if nack else "",
            draining=self._draining,
            mtls=self.advertises_mtls,
            identity=self.tls.identity.uri if self.tls is not None else "",
        )

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, wait: float = 2.0) -> Mesh:
        """Start the runtime thread; wait up to ``wait`` s for the first sync with Redis.

        Returns early once synced. When Redis is unreachable the mesh starts anyway, serving
        its on-disk last-known-good config, and keeps reconnecting in the background.
        Idempotent: a running mesh is returned as it is (``meshware serve`` and an app's
        lifespan may both start it).
        """
        with self._lock:
            if self._thread is not None:
                return self
            if self.settings.ca_url and self.renewer is None:
                self._enroll()
            self.started_at = time.time()
            self._draining = False
            self.tracer.start()  # here, not in __init__: after a pre-fork server forked
            if self.metrics.pusher is not None:
                self.metrics.pusher.start()  # likewise: each worker pushes its own series
            self.metrics.attach(SnapshotDir.from_env())  # shared by the workers, if any
            if self.settings.redis_url and self.watcher.verifier is None:
                log.warning(
                    "CONFIG SIGNING IS OFF for %s: anyone with write access to Redis can reroute "
                    "or open traffic; set MESHWARE_TRUSTED_KEYS (trusted_keys=) to the operator "
                    "public keys (meshware keys init)",
                    self.instance_id,
                )
            if self.settings.redis_url and self.watcher.load_last_known_good():
                log.info("starting from last-known-good config v%s", self.watcher.snapshot.version)
            self._thread = threading.Thread(
                target=self._run, name=f"meshware-{self.instance_id}", daemon=True
            )
            self._thread.start()
        self._started.wait(timeout=5.0)
        channel = self._channel
        loop = self._loop
        if channel is not None and loop is not None and wait > 0:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not channel.synced_once.is_set():
                time.sleep(0.005)
        return self

    def stop(self, *, timeout: float = 5.0, drain: float = 15.0) -> None:
        """Drain (see :meth:`drain`), then stop background work and deregister. Idempotent."""
        if self._thread is not None and self.settings.address:
            self.drain(timeout=drain)
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if loop.is_running():
                loop.call_soon_threadsafe(self._cancel_tasks)
            thread.join(timeout)
            self._thread = None
            self._loop = None
            self._started.clear()
            renewer, self.renewer = self.renewer, None
        if renewer is not None:
            renewer.stop()
        self.tracer.shutdown()  # exports the spans still queued
        if self.metrics.pusher is not None:
            self.metrics.pusher.stop(timeout)  # pushes once more
        self.access_log.sink.flush()

    def _enroll(self) -> None:
        """With ``ca_url``: credentials from the CA service (renewing those already in
        ``cert_dir``, else paying with the join token), kept renewed in the background.
        Raises :class:`~meshware.security.enroll.EnrollmentError`."""
        from meshware.security.enroll import workload_renewer

        s = self.settings
        assert s.ca_url is not None
        renewer = workload_renewer(
            ca_url=s.ca_url,
            service=s.service,
            namespace=s.namespace,
            join_token=s.join_token,
            cert_dir=self._cert_dir,
            redis_url=s.redis_url,
            mesh=s.mesh,
        ).start()
        self.renewer, self._cert_dir = renewer, renewer.directory
        if self.tls is None:
            self.tls = WorkloadTLS(renewer.directory)
        else:
            self.tls.reload()
        self._update_inbound()

    def _cancel_tasks(self) -> None:
        for worker in (self._channel, self._endpoints, self._file):
            if worker is not None:
                worker.closing = True
        for task in self._tasks:
            task.cancel()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        s = self.settings
        if s.redis_url:
            self._channel = RedisConfigChannel(
                url=s.redis_url,
                keys=self.keys,
                watcher=self.watcher,
                record=self.record,
                heartbeat_interval=s.heartbeat_interval,
                resync_interval=s.resync_interval,
            )
            self._tasks.append(asyncio.create_task(self._channel.run(), name="meshware-config"))
            self._endpoints = EndpointWatcher(
                url=s.redis_url, keys=self.keys, interval=s.discovery_interval
            )
            self._tasks.append(
                asyncio.create_task(self._endpoints.run(), name="meshware-endpoints")
            )
            if s.rollout_controller:
                self._start_rollout_controller(s.redis_url)
        elif s.config_file is not None:
            self._file = FileConfigSource(s.config_file, self.watcher)
            self._file.poll()
            self._tasks.append(asyncio.create_task(self._file.run(), name="meshware-config-file"))
        else:
            log.warning(
                "mesh %s runs without a control plane (no redis_url, no config_file)",
                self.instance_id,
            )
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="meshware-housekeeping"))
        self._tasks.append(
            asyncio.create_task(self.metrics.run(s.redis_url), name="meshware-metrics")
        )
        self._started.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _start_rollout_controller(self, redis_url: str) -> None:
        """Compete for the rollout lease (``MESHWARE_ROLLOUT_CONTROLLER``; see
        :mod:`meshware.rollout.controller`, which declines without a needed signing key)."""
        from meshware.rollout.controller import controller_for_mesh

        s = self.settings
        controller = controller_for_mesh(
            redis_url,
            mesh=s.mesh,
            holder=self.instance_id,
            signing_key=s.signing_key,
            trusted_keys=s.trusted_keys,
            lease_ttl=s.rollout_lease_ttl,
            tick=s.rollout_tick,
        )
        if controller is not None:
            self._tasks.append(
                asyncio.create_task(controller.run_async(), name="meshware-rollouts")
            )

    async def _housekeeping(self, interval: float = 1.0) -> None:
        """Every ``interval`` s: pick up renewed workload credentials (whoever wrote them) and
        flush the access log."""
        while True:
            await asyncio.sleep(interval)
            tls = self.tls
            if tls is not None:
                tls.reload_if_changed()
            self.access_log.sink.flush()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """ASGI lifespan: ``FastAPI(lifespan=mesh.lifespan)`` starts and stops the mesh."""
        await asyncio.to_thread(self.start)
        try:
            yield
        finally:
            await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        snap = self.snapshot
        return f"<Mesh {self.instance_id} config=v{snap.version} ({snap.source})>"
