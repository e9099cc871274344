"""The Bookinfo services of the demo, each its own ``meshware serve`` process.

:class:`ServiceGroup` starts them, waits until every one listens, reports the first that fails
(with the tail of its log), and stops them all however the demo ends: SIGTERM to each process
group (``meshware serve`` drains before exiting), then SIGKILL for any still alive after the
grace period. The children also die with the demo if it is killed outright (see
:mod:`meshware.childproc`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from meshware.childproc import die_with_parent
from meshware.embedded_redis import free_port
from meshware.errors import MeshwareError

__all__ = ["BOOKINFO", "Service", "ServiceGroup", "ServiceStartError", "assign_ports"]


@dataclass(frozen=True, slots=True)
class Service:
    """One workload: ``service`` ``version`` on ``port``, served from ``app`` (``MODULE:APP``,
    by default Bookinfo's ``examples.bookinfo.<service>:app``)."""

    service: str
    version: str
    port: int = 0
    app: str = ""
    args: tuple[str, ...] = ()
    """Extra ``meshware serve`` options (``--cert-dir``, ``--mtls``, ...)."""

    @property
    def name(self) -> str:
        return f"{self.service} {self.version}"

    @property
    def target(self) -> str:
        return self.app or f"examples.bookinfo.{self.service}:app"


BOOKINFO: tuple[Service, ...] = (
    Service("productpage", "v1"),
    Service("details", "v1"),
    Service("reviews", "v1"),
    Service("reviews", "v2"),
    Service("reviews", "v3"),
    Service("ratings", "v1"),
)


class ServiceStartError(MeshwareError):
    """A demo service exited or never listened; the message carries its log's tail."""


def assign_ports(services: Sequence[Service], base: int) -> list[Service]:
    """Ports ``base``, ``base + 1``, ... in order; ``base == 0`` picks free ports."""
    return [
        Service(s.service, s.version, free_port() if base == 0 else base + i, s.app, s.args)
        for i, s in enumerate(services)
    ]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class ServiceGroup:
    """Start, watch and stop a set of ``meshware serve`` processes."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        redis_url: str,
        mesh: str,
        root: Path,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        grace: float = 20.0,
    ) -> None:
        self.services = list(services)
        self.redis_url = redis_url
        self.mesh = mesh
        self.root = root
        self.log_dir = log_dir
        self.extra_env = dict(env or {})
        self.grace = grace
        self._procs: list[tuple[Service, subprocess.Popen[bytes], IO[bytes]]] = []

    def log_path(self, service: Service) -> Path:
        return self.log_dir / f"{service.service}-{service.version}-{service.port}.log"

    def _command(self, service: Service) -> list[str]:
        return [
            sys.executable,
            "-m",
            "meshware",
            "--redis-url",
            self.redis_url,
            "--mesh",
            self.mesh,
            "serve",
            service.target,
            "--service",
            service.service,
            "--version",
            service.version,
            "--port",
            str(service.port),
            *service.args,
        ]

    def start(self) -> None:
        """Launch every service (without waiting); see :meth:`wait_listening`."""
        python_path = os.pathsep.join(
            p for p in (str(self.root), os.environ.get("PYTHONPATH", "")) if p
        )
        env = {**os.environ, **self.extra_env, "PYTHONPATH": python_path}
        env.pop("MESHWARE_CONFIG", None)  # the demo's services follow its Redis, not a file
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            log = self.log_path(service).open("wb")
            try:
                proc = subprocess.Popen(
                    self._command(service),
                    cwd=self.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
                    preexec_fn=die_with_parent(),  # noqa: PLW1509 (see meshware.childproc)
                )
            except BaseException:
                log.close()
                raise
            self._procs.append((service, proc, log))

    def check_alive(self) -> None:
        """Raise :class:`ServiceStartError` if any service has exited."""
        for service, proc, _ in self._procs:
            code = proc.poll()
            if code is not None:
                raise ServiceStartError(
                    f"{service.name} (port {service.port}) exited with code {code}; "
                    f"the end of its log ({self.log_path(service)}):\n{_tail(self.log_path(service))}"
                )

    def wait_listening(
        self, timeout: float, on_ready: Callable[[Service, float], None] | None = None
    ) -> None:
        """Wait until every service accepts connections; report each as it does."""
        start = time.monotonic()
        pending = [service for service, _, _ in self._procs]
        while pending:
            self.check_alive()
            for service in list(pending):
                if _listening(service.port):
                    pending.remove(service)
                    if on_ready is not None:
                        on_ready(service, time.monotonic() - start)
            if pending and time.monotonic() - start > timeout:
                names = ", ".join(s.name for s in pending)
                raise ServiceStartError(
                    f"{names} did not listen within {timeout:g}s; see the logs in {self.log_dir}"
                )
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return [proc.pid for _, proc, _ in self._procs]

    def stop(self) -> None:
        """SIGTERM every process group, wait up to ``grace`` seconds, then SIGKILL."""
        procs, self._procs = self._procs, []
        for _, proc, _ in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for _, proc, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for _, proc, log in procs:
            _signal_group(proc, signal.SIGKILL)  # also any worker a service left behind
            if proc.poll() is None:
                proc.wait(timeout=5)
            log.close()

    def __enter__(self) -> ServiceGroup:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session made the child a group leader
