"""The rollout controller: the I/O loop around :class:`~meshware.rollout.machine.Machine`.

It runs inside mesh instances (``MESHWARE_ROLLOUT_CONTROLLER=1``; :class:`~meshware.Mesh`
starts it as a background task) or standalone (``meshware rollout run``). Every instance
that runs it competes for one lease (:mod:`meshware.rollout.lease`); the holder drives every
Rollout of the mesh, the others wait to take over. Each tick, the leader:

1. renews the lease (or stops: it is no longer the leader);
2. reads the current config and, for each Rollout in it, its state (a new spec revision or a
   ``retry`` starts a new run);
3. reconciles the state with the VirtualService's marker: a stage that reached the config
   but was not recorded (the previous leader died in between) is recorded now, never
   written again;
4. asks the machine what to do and does it (measure, call webhooks, write traffic), saving
   the new state after each step with a fenced write.

A config write happens only through :class:`~meshware.rollout.writer.TrafficWriter`, signed
with the controller's operator key when it has one. With config signing on (instances trust
operator keys), an instance without a signing key must not drive rollouts: its versions
would be refused by every instance; :func:`controller_for_mesh` declines to start it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from meshware.config.connection import sync_client
from meshware.config.keys import Keys
from meshware.config.model.mesh import MeshConfig
from meshware.config.model.networking import DestinationRule
from meshware.config.model.rollout import Rollout, rollout_host
from meshware.config.parse import Document, parse_documents
from meshware.config.record import ConfigRecord, RawDocument, canonical_json, document_key
from meshware.config.store import ConfigStore
from meshware.errors import ConfigError, ControlPlaneError, MeshwareError
from meshware.rollout import checks, webhooks
from meshware.rollout.analysis import MetricsReader
from meshware.rollout.errors import LeaseLostError
from meshware.rollout.lease import Lease
from meshware.rollout.machine import (
    CallHooks,
    Machine,
    RunChecks,
    Transition,
    Wait,
    WriteTraffic,
)
from meshware.rollout.plan import build_plan
from meshware.rollout.state import CheckResult, RolloutState
from meshware.rollout.storage import RolloutStorage
from meshware.rollout.traffic import Marker, canary_weight, find_virtual_service, read_marker
from meshware.rollout.writer import TrafficWriter
from meshware.security.signing import ConfigVerifier, OperatorKey, load_trusted_keys

log = logging.getLogger("meshware.rollout")

DEFAULT_LEASE_TTL = 10.0
DEFAULT_TICK = 1.0
MAX_ACTIONS_PER_TICK = 16


def revision_of(document: RawDocument) -> str:
    """A Rollout's revision: the digest of its ``spec`` as stored."""
    spec = document.get("spec") or {}
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:12]


def subset_version(config: MeshConfig, host: str, subset: str) -> str:
    """The ``version`` label a subset of ``host`` selects (what instances report), or the
    subset's own name if its DestinationRule does not select one."""
    for rule in config.of(DestinationRule):
        if rule.canonical_host != host:
            continue
        found = rule.spec.subset(subset)
        if found is not None:
            return found.labels.get("version", subset)
    return subset


def default_holder() -> str:
    return f"rollout-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RolloutController:
    """Drives every Rollout of one mesh while it holds the lease (see the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        *,
        mesh: str = "default",
        holder: str | None = None,
        signer: OperatorKey | None = None,
        trusted: ConfigVerifier | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        tick: float = DEFAULT_TICK,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.holder = holder or default_holder()
        self.tick_interval = tick
        self.client = sync_client(redis_url)
        self.keys = Keys(mesh)
        self.store = ConfigStore(
            self.client, mesh=mesh, url=redis_url, signer=signer, trusted=trusted
        )
        self.lease = Lease(self.client, self.keys, self.holder, ttl=lease_ttl, url=redis_url)
        self.storage = RolloutStorage(self.client, self.keys, url=redis_url)
        self.metrics = MetricsReader(self.client, self.keys, url=redis_url)
        self.writer = TrafficWriter(
            self.store, self.lease, actor=f"rollout-controller/{self.holder}"
        )
        self.http = http or httpx.Client()
        self._own_http = http is None
        self._clock = clock
        self._leading = False
        self._warned: set[str] = set()
        self._busy = threading.Lock()
        """Held during a tick: :meth:`close` waits for it before handing the lease over."""

    @property
    def leading(self) -> bool:
        return self.lease.held

    # -- the loop ------------------------------------------------------------------------

    def tick(self) -> bool:
        """One pass; True if this controller led during it. Never raises for Redis trouble
        or a lost lease (both are logged): the loop goes on and tries again."""
        with self._busy:
            return self._tick()

    def _tick(self) -> bool:
        try:
            if not self.lease.ensure():
                if self._leading:
                    log.warning("%s lost the rollout lease", self.holder)
                self._leading = False
                return False
            if not self._leading:
                log.info("%s took the rollout lease (fence %d)", self.holder, self.lease.fence)
                self._leading = True
            self._drive_all()
            return True
        except LeaseLostError as exc:
            log.warning("%s: %s", self.holder, exc)
            self.lease.token = ""
            self._leading = False
            return False
        except ControlPlaneError as exc:
            log.warning(
                "rollout controller %s cannot reach the control plane: %s", self.holder, exc
            )
            return self._leading
        except Exception:  # a bug must not end the loop of a mesh instance
            log.exception("rollout controller %s failed during a tick", self.holder)
            return self._leading

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then hand the lease over (``meshware rollout run``)."""
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(self.tick_interval)
        finally:
            self.close()

    async def run_async(self) -> None:
        """The same loop as a task of the mesh runtime (blocking calls in a thread)."""
        try:
            while True:
                await asyncio.to_thread(self.tick)
                await asyncio.sleep(self.tick_interval)
        finally:
            await asyncio.to_thread(self.close)

    def close(self, *, timeout: float = 10.0) -> None:
        """Release the lease (after the tick in progress, if any) and the connections."""
        acquired = self._busy.acquire(timeout=timeout)
        try:
            self.lease.release()
        except ControlPlaneError as exc:
            log.warning("could not release the rollout lease: %s", exc)
        finally:
            if self._own_http:
                self.http.close()
            self.client.close()
            if acquired:
                self._busy.release()

    # -- driving -------------------------------------------------------------------------

    def _drive_all(self) -> None:
        record = self.store.current()
        if record is None:
            return
        try:
            config = parse_documents(
                Document(body, f"redis (v{record.version})", i)
                for i, body in enumerate(record.documents, start=1)
            )
        except ConfigError as exc:
            self._warn_once(f"config v{record.version}", f"the current config is invalid: {exc}")
            return
        for rollout in config.of(Rollout):
            try:
                self._drive(rollout, config, record)
            except (LeaseLostError, ControlPlaneError):
                raise
            except MeshwareError as exc:
                # This rollout cannot proceed (its write was refused as invalid or could not be
                # signed, ...): say so once, keep driving the others, try again next tick.
                self._warn_once(rollout.ref + str(exc), f"{rollout.ref}: {exc}")
            if not self.lease.held:
                return

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.error("%s", message)

    def _drive(self, rollout: Rollout, config: MeshConfig, record: ConfigRecord) -> None:
        namespace, name = rollout.metadata.namespace, rollout.metadata.name
        document = next(d for d in record.documents if document_key(d) == rollout.key)
        revision = revision_of(document)
        machine = Machine(
            name, rollout.spec.canary_subset, build_plan(rollout.spec), rollout.spec.analysis
        )
        state = self.storage.load(namespace, name)
        control = self.storage.control(namespace, name)
        vs, vs_document = find_virtual_service(config, record.documents, rollout)
        now = self._clock()
        if state is None or state.revision != revision or control.retry > state.retry_seen:
            state = self._save(
                machine.initial(
                    namespace,
                    revision,
                    now,
                    control,
                    leader=self.holder,
                    weight=canary_weight(vs, rollout) if state is None else 0,
                )
            )
        recovered = machine.reconcile(state, read_marker(vs_document), now)
        if recovered is not None:
            log.info(
                "%s: recovered a stage written before the previous leader stopped", rollout.ref
            )
            state = self._save(recovered)
        for _ in range(MAX_ACTIONS_PER_TICK):
            if not self.lease.keep():  # renewed between actions: webhooks may take a while
                raise LeaseLostError("the lease was lost during a tick")
            now = self._clock()
            decision = machine.decide(state, control, now)
            if isinstance(decision, Wait):
                return
            if isinstance(decision, Transition):
                state = self._save(decision)
            elif isinstance(decision, RunChecks):
                result = self._check(rollout, config, now)
                state = self._save(machine.on_check(state, result, self._clock()))
            elif isinstance(decision, CallHooks):
                hooks = rollout.spec.analysis.hooks(decision.kind)
                results = webhooks.call_all(self.http, rollout, state, hooks)
                state = self._save(machine.on_hooks(state, decision.kind, results, self._clock()))
            elif isinstance(decision, WriteTraffic):
                state = self._write(rollout, machine, state, decision)

    def _write(
        self, rollout: Rollout, machine: Machine, state: RolloutState, write: WriteTraffic
    ) -> RolloutState:
        marker = Marker(
            rollout=rollout.metadata.name,
            run=state.run,
            stage=write.stage_key,
            fence=self.lease.fence,
            at=self._clock(),
            weight=write.traffic.weight,
            outcome=write.outcome or "",
            reason=write.reason,
        )
        outcome = self.writer.write(rollout, write.traffic, marker, write.action)
        if outcome.version is not None:
            log.info("%s: %s (config v%d)", rollout.ref, write.action, outcome.version)
        return self._save(
            machine.on_written(
                state, write, outcome.version, self._clock(), recovered=outcome.already_applied
            )
        )

    def _check(self, rollout: Rollout, config: MeshConfig, now: float) -> CheckResult:
        spec = rollout.spec
        host = rollout_host(rollout)
        window = spec.analysis.interval
        canary = self.metrics.measure(
            host, subset_version(config, host, spec.canary_subset), window, now=now
        )
        stable = self.metrics.measure(
            host, subset_version(config, host, spec.stable_subset), window, now=now
        )
        return checks.judge(spec.analysis, canary, stable, at=now)

    def _save(self, transition: Transition) -> RolloutState:
        state = transition.state.evolve(leader=self.holder)
        events = [dataclasses.replace(e, leader=self.holder) for e in transition.events]
        self.storage.save(state, events, self.lease.token)
        return state


def _signing(
    signing_key: Path | None, trusted_keys: Sequence[Path], mesh: str
) -> tuple[OperatorKey | None, ConfigVerifier | None]:
    if signing_key is None:
        return None, None
    signer = OperatorKey.load(signing_key)
    trusted = [signer.public, *load_trusted_keys(trusted_keys)] if trusted_keys else [signer.public]
    return signer, ConfigVerifier(trusted, mesh=mesh)


def build_controller(
    redis_url: str,
    *,
    mesh: str = "default",
    holder: str | None = None,
    signing_key: Path | None = None,
    trusted_keys: Sequence[Path] = (),
    lease_ttl: float = DEFAULT_LEASE_TTL,
    tick: float = DEFAULT_TICK,
) -> RolloutController:
    """A controller that signs with ``signing_key`` (an operator private key) if given, and
    builds on versions signed by it or by ``trusted_keys``."""
    signer, trusted = _signing(signing_key, trusted_keys, mesh)
    return RolloutController(
        redis_url,
        mesh=mesh,
        holder=holder,
        signer=signer,
        trusted=trusted,
        lease_ttl=lease_ttl,
        tick=tick,
    )


def controller_for_mesh(
    redis_url: str,
    *,
    mesh: str,
    holder: str,
    signing_key: Path | None,
    trusted_keys: Sequence[Path],
    lease_ttl: float,
    tick: float,
) -> RolloutController | None:
    """The controller a mesh instance runs, or None (logged) if it must not compete for the
    lease: config signing is on (``trusted_keys``) but it has no key to sign with."""
    if trusted_keys and signing_key is None:
        log.error(
            "%s: MESHWARE_ROLLOUT_CONTROLLER is set but this instance has no signing key "
            "(MESHWARE_SIGNING_KEY) while config signing is on; it will not drive rollouts",
            holder,
        )
        return None
    try:
        return build_controller(
            redis_url,
            mesh=mesh,
            holder=holder,
            signing_key=signing_key,
            trusted_keys=trusted_keys,
            lease_ttl=lease_ttl,
            tick=tick,
        )
    except MeshwareError as exc:
        log.error("%s: cannot start the rollout controller: %s", holder, exc)
        return None
