"""The commands a new user runs first: ``meshware demo`` and ``meshware redis``.

The demo tests look for leftovers by a marker in the environment, which every process the
demo starts (the six services, anything they start) inherits: once the demo is gone, no
process on the machine may still carry it. redis-server overwrites its environment block when
it sets its process title, so the embedded Redis is checked by its port instead.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from meshware.embedded_redis import free_port
from tests.helpers import wait_until
from tests.otlp_receiver import otlp_receiver

MESHWARE = [sys.executable, "-m", "meshware"]
ENV = {k: v for k, v in os.environ.items() if k != "MESHWARE_REDIS_URL"} | {"COLUMNS": "200"}
SPLIT = re.compile(
    r"split {2}(?P<users>[a-z ]+): (?P<observed>.*?) {2}\(weights (?P<weights>.*?)\)"
)
STEP = re.compile(r"^Step (\d+) ", re.MULTILINE)


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _marked(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker``."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(entry.name))
    return found


@contextmanager
def _demo_env() -> Iterator[tuple[dict[str, str], str]]:
    marker = f"MESHWARE_TEST_DEMO={uuid.uuid4().hex}"
    env = ENV | dict([marker.split("=", 1)])
    try:
        yield env, marker
    finally:  # never leave a stray process to the next test, whatever failed
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)


def _free_port_range(count: int) -> int:
    """A base port such that ``base .. base + count - 1`` were all free a moment ago."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free port range")


def _redis_port(output: str) -> int:
    found = re.search(r"embedded redis-server on 127\.0\.0\.1:(\d+)", output)
    assert found, output
    return int(found.group(1))


def _percentages(text: str) -> dict[str, float]:
    return {v: float(p) for v, p in re.findall(r"(v\d) ([\d.]+)%?", text)}


def test_demo_runs_to_completion_splits_match_and_cleans_up() -> None:
    with _demo_env() as (env, marker):
        started = time.monotonic()
        proc = subprocess.run(
            [*MESHWARE, "demo", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        elapsed = time.monotonic() - started
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        assert "Traceback" not in out + proc.stderr
        assert elapsed < 90, f"the demo took {elapsed:.1f}s"
        assert not _marked(marker), "a process started by the demo survived it"
    assert _port_closed(_redis_port(out))

    # each step's printed split, beside the weights of the manifest applied at that step
    sections = dict(zip(STEP.findall(out), STEP.split(out)[2::2], strict=True))
    expected = {
        "2": {"everyone": {"v1": 90, "v2": 10}},
        "3": {"everyone": {"v1": 50, "v3": 50}},
        "4": {"jason": {"v2": 100}, "everyone else": {"v3": 100}},
        "5": {"jason": {"v2": 100}, "everyone else": {"v3": 100}},  # the NACKed v5 changed nothing
    }
    for step, users in expected.items():
        splits = {m["users"]: m for m in SPLIT.finditer(sections[step])}
        assert set(splits) == set(users), sections[step]
        for label, weights in users.items():
            assert _percentages(splits[label]["weights"]) == weights
            observed = _percentages(splits[label]["observed"])
            assert set(observed) == set(weights), splits[label].group(0)
            for version, weight in weights.items():
                # 600 requests: one standard deviation of a 50 % share is about 2 points
                assert abs(observed[version] - weight) <= 8, splits[label].group(0)
    assert out.count("✓ matches the weights") == 6
    assert "NACKed it" in out and "signature does not verify" in out
    assert re.search(
        r"jason\): trace [0-9a-f]{32}  productpage → reviews-v2 → ratings: every hop", out
    )


def _start_demo(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MESHWARE, "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared:\n{seen}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_everything(sig: signal.Signals) -> None:
    with _demo_env() as (env, marker):
        proc = _start_demo(env)
        try:
            seen = _read_until(proc, "Step 2")  # the services are up, traffic about to flow
            assert len(_marked(marker)) == 7  # the demo and six services
            proc.send_signal(sig)
            rest, _ = proc.communicate(timeout=40)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130, rest
        assert "interrupted" in rest and "Traceback" not in rest
        assert not _marked(marker), "a process started by the demo survived Ctrl-C"
        assert _port_closed(_redis_port(seen))


def test_demo_serve_keeps_the_mesh_running_until_ctrl_c() -> None:
    with _demo_env() as (env, marker):
        proc = subprocess.Popen(
            [*MESHWARE, "demo", "--port", "0", "--requests", "30", "--serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            seen = _read_until(proc, "curl -H 'end-user: jason'")
            url = re.findall(r"http://127\.0\.0\.1:\d+/productpage", seen)[-1]
            page = httpx.get(url, headers={"end-user": "jason"}, timeout=10).json()
            assert page["reviews"]["served_by"] == "reviews-v2"  # the last route stays in force
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=40)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, rest
        assert "stopped" in rest and "Traceback" not in rest
        assert not _marked(marker)
        assert _port_closed(_redis_port(seen))


def test_killed_demo_takes_its_children_down() -> None:
    """SIGKILL leaves the demo no chance to clean up: the kernel stops its children."""
    with _demo_env() as (env, marker):
        proc = _start_demo(env)
        try:
            seen = _read_until(proc, "Step 2")
            proc.kill()
        finally:
            proc.kill()
            proc.wait()
        assert wait_until(lambda: not _marked(marker), timeout=40), _marked(marker)
        assert wait_until(lambda: _port_closed(_redis_port(seen)), timeout=10)


def test_demo_reports_a_service_that_fails_to_start() -> None:
    base = _free_port_range(6)
    with _demo_env() as (env, marker), socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 3))  # reviews v2's port, bound but not listening
        proc = subprocess.run(
            [*MESHWARE, "demo", "--port", str(base)],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"reviews v2 (port {base + 3}) exited with code" in proc.stderr
        assert "address already in use" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not _marked(marker)


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


def test_demo_exports_its_traces_over_otlp() -> None:
    with otlp_receiver() as receiver, _demo_env() as (env, marker):
        proc = subprocess.run(
            [*MESHWARE, "demo", "--port", "0", "--requests", "30", "--otlp-endpoint", receiver.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not _marked(marker)
    samples = re.findall(r"sample request \(([a-z ]+)\): trace ([0-9a-f]{32})", proc.stdout)
    assert len(samples) == 3
    for _, trace_id in samples:
        # the services flushed their spans as they stopped: every sample trace is complete
        services = {s.service for s in receiver.trace(trace_id) if s.kind == "SERVER"}
        assert {"productpage", "details", "reviews"} <= services, (trace_id, services)
    jason = next(t for who, t in samples if who == "jason")
    assert {s.service for s in receiver.trace(jason)} == {
        "productpage",
        "details",
        "reviews",
        "ratings",
    }
