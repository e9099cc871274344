"""The admin app of a multi-worker server: served by one elected worker at a time.

``meshware serve --workers N --admin-port P`` cannot bind ``P`` in every worker. The workers
hold an election instead: each tries an exclusive ``flock`` on ``admin.lock`` in the shared
metrics directory (:mod:`meshware.telemetry.multiproc`); the one that gets it serves its
admin app on ``P`` from a thread, the others retry every :data:`RETRY` seconds. The kernel
releases the lock when the holder exits, so if that worker dies another one takes the port
over within about a second.

``/metrics`` there sums every worker's series (the holder's live ones plus the others'
snapshots), so it is complete whichever worker serves it; ``/readyz``, ``/config_dump`` and
``/certs`` describe the holder, which runs the same code and config as its siblings.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

import uvicorn

from meshware.telemetry.multiproc import METRICS_DIR_ENV

__all__ = ["ADMIN_SEAT_ENV", "RETRY", "AdminSeat"]

log = logging.getLogger("meshware.serving")

ADMIN_SEAT_ENV = "MESHWARE_ADMIN_SEAT"
"""``host:port`` the elected worker serves the admin app on (set by ``meshware serve``)."""
RETRY = 0.5


class AdminSeat:
    """One worker's candidacy for serving ``app`` on ``host:port`` (see the module doc)."""

    def __init__(self, app: Any, host: str, port: int, lock_path: Path) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.lock_path = lock_path
        self.holding = False
        self._stop = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._run, name="meshware-admin-seat", daemon=True)

    @classmethod
    def from_env(cls, app: Any) -> AdminSeat | None:
        """A started candidacy if ``meshware serve`` asked for one, else None."""
        seat, directory = os.environ.get(ADMIN_SEAT_ENV), os.environ.get(METRICS_DIR_ENV)
        if not seat or not directory:
            return None
        host, _, port = seat.rpartition(":")
        candidate = cls(
            app, host.strip("[]") or "127.0.0.1", int(port), Path(directory) / "admin.lock"
        )
        candidate.start()
        return candidate

    def start(self) -> AdminSeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            handle = self._acquire()
            if handle is None:
                self._stop.wait(RETRY)
                continue
            try:
                self.holding = True
                log.info(
                    "worker %d serves the admin app on %s:%d", os.getpid(), self.host, self.port
                )
                server = uvicorn.Server(
                    uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning")
                )
                self._server = server
                if not self._stop.is_set():
                    with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
                        server.run()
            finally:
                self.holding = False
                self._server = None
                handle.close()  # gives the seat up
            self._stop.wait(RETRY)

    def _acquire(self) -> IO[str] | None:
        try:
            handle = self.lock_path.open("a")
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return handle

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        server = self._server
        if server is not None:
            server.should_exit = True
        self._thread.join(timeout)
