"""Metrics of a multi-process server: per-process snapshots in a shared directory.

Each worker of ``meshware serve --workers N`` (or of any pre-fork server whose environment
sets ``MESHWARE_METRICS_DIR``) writes the cumulative series of its process to
``w-<pid>-<token>.json`` in that directory about once a second and when it stops, atomically
(a temporary file renamed over the old one). Whoever serves ``/metrics`` sums every file with
its own live values, skipping its own file, so nothing is counted twice.

Files of dead workers are kept, so counters never go backwards when a worker is replaced; to
keep the directory bounded, the reader folds them into one ``retired.json`` (under an
exclusive ``flock``): the directory holds at most one file per live worker, ``retired.json``
and two lock files. A fold is crash-safe: ``retired.json`` names the files already folded into
it, and a file listed there is deleted instead of being counted again.

``meshware serve`` creates the directory (``<state dir>/metrics/<service>-<port>``), empties
it before forking and exports it to the workers. With another server, set
``MESHWARE_METRICS_DIR`` to an empty directory before it starts, as with prometheus_client's
``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from meshware.telemetry.metrics import Sample, merge

__all__ = ["METRICS_DIR_ENV", "SnapshotDir", "prepare_dir", "server_metrics_dir"]

log = logging.getLogger("meshware.metrics")

METRICS_DIR_ENV = "MESHWARE_METRICS_DIR"
_RETIRED = "retired.json"
_FOLD_LOCK = ".fold.lock"


def prepare_dir(path: Path) -> Path:
    """Create ``path`` empty (a server about to fork its workers calls this)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def server_metrics_dir(port: int, environ: Mapping[str, str] | None = None) -> Path:
    """The directory a multi-worker server on ``port`` shares: ``MESHWARE_METRICS_DIR`` if
    set, else ``<state dir>/metrics/<service>-<port>``."""
    env = os.environ if environ is None else environ
    if env.get(METRICS_DIR_ENV):
        return Path(env[METRICS_DIR_ENV])
    state = Path(env["MESHWARE_STATE_DIR"]) if env.get("MESHWARE_STATE_DIR") else None
    if state is None:
        from meshware.settings import default_state_dir

        state = default_state_dir()
    return state / "metrics" / f"{env.get('MESHWARE_SERVICE', 'service')}-{port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "w" and parts[1].isdigit() and name.endswith(".json"):
        return int(parts[1])
    return None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable metrics snapshot %s: %s", path, exc)
        return None
    return value if isinstance(value, dict) else None


def _samples(document: dict[str, Any] | None) -> list[Sample]:
    if document is None:
        return []
    found = []
    for item in document.get("samples", ()):
        try:
            found.append(Sample.from_json(item))
        except (TypeError, ValueError):
            continue
    return found


def _write_atomic(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class SnapshotDir:
    """This process's view of the shared directory: its own file, and everyone else's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.name = f"w-{self.pid}-{secrets.token_hex(4)}.json"
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SnapshotDir | None:
        env = os.environ if environ is None else environ
        value = env.get(METRICS_DIR_ENV)
        return cls(Path(value)) if value else None

    def write(self, samples: list[Sample], *, ready: bool = True) -> None:
        """Replace this process's file with ``samples`` (cumulative since it started)."""
        document = {
            "pid": self.pid,
            "written": time.time(),
            "ready": ready,
            "samples": [s.to_json() for s in samples],
        }
        with self._lock:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.path / self.name, document)
            except OSError as exc:
                log.warning("cannot write metrics snapshot to %s: %s", self.path, exc)

    def others(self) -> list[Sample]:
        """The sum of every other process's series, dead ones included (folding them)."""
        with self._lock, self._folding():
            retired = _load(self.path / _RETIRED) or {}
            folded = set(retired.get("folded", ()))
            groups = [_samples(retired)]
            dead: list[tuple[str, list[Sample]]] = []
            try:
                names = sorted(p.name for p in self.path.iterdir())
            except FileNotFoundError:
                return []
            for name in names:
                pid = _pid_of(name)
                if pid is None or name == self.name:
                    continue
                if name in folded:
                    with contextlib.suppress(FileNotFoundError):
                        (self.path / name).unlink()
                    continue
                samples = _samples(_load(self.path / name))
                if pid != self.pid and not _alive(pid):
                    dead.append((name, samples))
                groups.append(samples)
            if dead:
                self._fold(groups[0], folded, dead)
            return merge(groups)

    @contextlib.contextmanager
    def _folding(self) -> Iterator[None]:
        """An exclusive lock between the processes that may read the directory."""
        try:
            handle = (self.path / _FOLD_LOCK).open("a")
        except OSError:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            handle.close()  # releases the lock

    def _fold(
        self, retired: list[Sample], folded: set[str], dead: list[tuple[str, list[Sample]]]
    ) -> None:
        present = {name for name in folded if (self.path / name).exists()}
        names = [name for name, _ in dead]
        document = {
            "samples": [s.to_json() for s in merge([retired, *(s for _, s in dead)])],
            "folded": sorted(present | set(names)),
        }
        try:
            _write_atomic(self.path / _RETIRED, document)
        except OSError as exc:
            log.warning("cannot fold dead workers' metrics in %s: %s", self.path, exc)
            return
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def forget(self) -> None:
        """Remove this process's file (tests; a stopping worker keeps it)."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / self.name).unlink()
