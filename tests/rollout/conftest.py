"""Rollout test fixtures: a Bookinfo-style mesh of real ``meshware serve`` processes under
load, standalone controllers as subprocesses, and a watcher of config sync."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from meshware.config.keys import Keys
from meshware.config.parse import load_yaml
from meshware.config.registry import list_instances
from meshware.config.store import ConfigStore
from meshware.demo.services import Service, ServiceGroup, assign_ports
from meshware.embedded_redis import RedisServer
from meshware.rollout.lease import read_holder
from meshware.rollout.state import Event, RolloutState
from meshware.rollout.storage import RolloutStorage
from tests.helpers import ROOT

REVIEWS_APP = "tests.apps.faulty_reviews:app"
FAULTS = "v3:fail-every=5,v4:delay-ms=300"
"""reviews v3 fails exactly 20 % of requests; v4 answers 300 ms late; v1 and v2 behave."""

DESTINATION_RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
  - {name: v4, labels: {version: v4}}
"""

REVIEWS_V1 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  annotations: {meshware.io/sticky: "header:end-user"}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""


@dataclass
class RolloutMesh:
    """The running test mesh: Redis, the services, and helpers to steer and observe it."""

    redis_url: str
    store: ConfigStore
    services: list[Service]
    log_dir: Path
    storage: RolloutStorage = field(init=False)

    def __post_init__(self) -> None:
        self.storage = RolloutStorage(self.store.client, self.store.keys)

    @property
    def productpage(self) -> str:
        port = next(s.port for s in self.services if s.service == "productpage")
        return f"http://127.0.0.1:{port}/productpage"

    def port_of(self, service: str, version: str) -> int:
        return next(s.port for s in self.services if (s.service, s.version) == (service, version))

    def apply(self, *texts: str) -> int:
        result = self.store.apply(load_yaml("\n---\n".join(texts), "test.yaml"))
        head = self.store.head()
        assert head is not None
        return result.record.version if result.record is not None else head.version

    def state(self, name: str = "reviews") -> RolloutState | None:
        return self.storage.load("default", name)

    def events(self, name: str = "reviews", revision: str | None = None) -> list[Event]:
        """Oldest first, only of ``revision`` if given."""
        events = list(reversed(self.storage.history("default", name)))
        return [e for e in events if revision is None or e.revision == revision]

    def wait_state(
        self, predicate: Callable[[RolloutState], bool], timeout: float, name: str = "reviews"
    ) -> RolloutState:
        deadline = time.monotonic() + timeout
        state = self.state(name)
        while time.monotonic() < deadline:
            state = self.state(name)
            if state is not None and predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"rollout state never matched within {timeout:g}s; last: {state}")

    def leader(self) -> str:
        holder = read_holder(self.store.client, self.store.keys)
        return holder.holder if holder else ""

    def reviews_actions(self, since_version: int) -> list[tuple[int, str]]:
        """(version, action) of every version after ``since_version``, oldest first."""
        return sorted(
            (r.version, r.action) for r in self.store.history() if r.version > since_version
        )


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutMesh]:
    """productpage and details from examples/bookinfo, reviews v1..v4 from
    tests/apps/faulty_reviews.py, each a ``meshware serve`` process (one per module)."""
    root = tmp_path_factory.mktemp("rollout-mesh")
    server = RedisServer(directory=root / "redis")
    server.start()
    store = ConfigStore.from_url(server.url)
    services = assign_ports(
        [
            Service("productpage", "v1"),
            Service("details", "v1"),
            *(Service("reviews", v, app=REVIEWS_APP) for v in ("v1", "v2", "v3", "v4")),
        ],
        0,
    )
    group = ServiceGroup(
        services,
        redis_url=server.url,
        mesh="default",
        root=ROOT,
        log_dir=root / "logs",
        env={
            "MESHWARE_STATE_DIR": str(root / "state"),
            "MESHWARE_HEARTBEAT_INTERVAL": "0.2",
            "MESHWARE_INSTANCE_TTL": "2",
            "REVIEWS_FAULTS": FAULTS,
        },
        grace=5.0,
    )
    mesh = RolloutMesh(server.url, store, services, root / "logs")
    try:
        mesh.apply(DESTINATION_RULES, REVIEWS_V1)
        group.start()
        group.wait_listening(60)
        assert _wait_instances(store, 6, 30), "not every service registered"
        yield mesh
    finally:
        group.stop()
        store.close()
        server.close()


def _wait_instances(store: ConfigStore, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = store.head()
        instances = list_instances(store.client, store.keys, head)
        if len(instances) >= count and all(i.state == "SYNCED" for i in instances):
            return True
        time.sleep(0.1)
    return False


# -- load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    at: float
    user: str
    status: int
    served_by: str
    """``reviews-v2``, or ``error:500`` when reviews failed, ``error:transport``..."""


class Load:
    """Bounded traffic through productpage from a fixed population of users (``end-user``)."""

    def __init__(
        self,
        url: str,
        users: Sequence[str],
        *,
        rate: float = 40.0,
        threads: int = 4,
        limit: int = 20_000,
    ) -> None:
        self.url = url
        self.users = list(users)
        self.rate = rate
        self.threads = threads
        self.limit = limit
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._sent = 0

    def __enter__(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _run(self, index: int) -> None:
        pause = self.threads / self.rate
        turn = index
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self._sent >= self.limit:
                        return
                    self._sent += 1
                user = self.users[turn % len(self.users)]
                turn += self.threads
                self._one(client, user)
                self._stop.wait(pause)

    def _one(self, client: httpx.Client, user: str) -> None:
        try:
            response = client.get(self.url, headers={"end-user": user})
        except httpx.HTTPError:
            answer = Answer(time.time(), user, 0, "error:transport")
        else:
            reviews = response.json().get("reviews", {}) if response.status_code == 200 else {}
            served = (
                reviews.get("served_by") or f"error:{reviews.get('error', response.status_code)}"
            )
            answer = Answer(time.time(), user, response.status_code, served)
        with self._lock:
            self.answers.append(answer)

    def since(self, start: float, end: float | None = None) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= start and (end is None or a.at <= end)]


# -- config sync ---------------------------------------------------------------------------


class SyncWatcher:
    """Follows every new config version and checks that each live instance runs it (or a
    newer one) no later than ``within`` seconds after it was stored: a deadline per version,
    polled every 20 ms. ``late`` lists the versions that missed it."""

    def __init__(self, redis_url: str, *, within: float = 1.0) -> None:
        self.store = ConfigStore.from_url(redis_url)
        self.keys = Keys()
        self.within = within
        self.pending: dict[int, float] = {}
        self.synced: dict[int, float] = {}
        self.late: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._seen = 0

    def __enter__(self) -> SyncWatcher:
        head = self.store.head()
        self._seen = head.version if head else 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            head = self.store.head()
            now = time.time()
            if head is not None and head.version > self._seen:
                for record in self.store.history(20):
                    if record.version > self._seen and record.epoch == head.epoch:
                        self.pending[record.version] = record.created_at
                self._seen = head.version
            if self.pending and head is not None:
                instances = list_instances(self.store.client, self.store.keys, head)
                for version, created in sorted(self.pending.items()):
                    behind = [
                        i.record.instance
                        for i in instances
                        if i.record.config_epoch != head.epoch or i.record.config_version < version
                    ]
                    if not behind:
                        self.synced[version] = now - created
                        del self.pending[version]
                    elif now > created + self.within:
                        self.late[version] = f"{', '.join(behind)} not synced"
                        del self.pending[version]
            self._stop.wait(0.02)


# -- controllers ---------------------------------------------------------------------------


class Controllers:
    """``meshware rollout run`` subprocesses; every one is stopped at teardown."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    def start(self, holder: str, *, lease_ttl: float = 2.0, tick: float = 0.2) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{holder}.log").open("wb")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshware",
                "--redis-url",
                self.redis_url,
                "rollout",
                "run",
                "--lease-ttl",
                str(lease_ttl),
                "--tick",
                str(tick),
                "--holder",
                holder,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[holder] = (proc, log)

    def kill(self, holder: str) -> None:
        proc, _ = self.procs[holder]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def log(self, holder: str) -> str:
        return (self.log_dir / f"{holder}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            log.close()
        self.procs.clear()


@pytest.fixture
def controllers(bookinfo: RolloutMesh, tmp_path: Path) -> Iterator[Controllers]:
    group = Controllers(bookinfo.redis_url, tmp_path / "controllers")
    try:
        yield group
    finally:
        group.stop()
