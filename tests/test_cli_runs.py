"""The commands a new user runs first: ``meshware demo`` and ``meshware redis``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import redis

from meshware.embedded_redis import free_port
from tests.helpers import wait_until

MESHWARE = [sys.executable, "-m", "meshware"]
ENV = {k: v for k, v in os.environ.items() if k != "MESHWARE_REDIS_URL"} | {"COLUMNS": "200"}


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_to_completion_and_cleans_up() -> None:
    proc = subprocess.run(
        [*MESHWARE, "demo"], capture_output=True, text=True, timeout=120, env=ENV, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    for step in ("config v1 stored", "config v4 stored", "NACKed v5", "config v6 stored"):
        assert step in out
    assert "reviews → v1 90%, v2 10%" in out
    assert "must be between 0 and 100, got 250" in out  # the NACK reason, as status shows it
    port = int(re.search(r"embedded redis-server on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
    assert _port_closed(port)  # the embedded Redis is gone


def test_redis_command_serves_until_terminated() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*MESHWARE, "redis", "--port", str(port)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"MESHWARE_REDIS_URL=redis://127.0.0.1:{port}/0" in line
        assert redis.Redis(port=port).ping()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert wait_until(lambda: _port_closed(port), timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
