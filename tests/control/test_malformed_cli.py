"""Every malformed manifest is refused by the real ``meshware apply`` and leaves Redis untouched.

Each file in tests/data/malformed starts with ``# expect: <field path> | <message fragment>``
(and optionally ``# resource: Kind/name``); the command must exit 1, print the file name, the
resource, the field path and the message, and never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from meshware.embedded_redis import RedisServer
from tests.helpers import BOOKINFO, MALFORMED, malformed_expectation

FILES = sorted(MALFORMED.glob("*.yaml"))


def _dump(client: redis.Redis) -> dict[str, object]:
    state: dict[str, object] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == "hash":
            state[key] = client.hgetall(key)
        elif kind == "list":
            state[key] = client.lrange(key, 0, -1)
        elif kind == "string":
            state[key] = client.get(key)
        elif kind == "zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = kind
    return state


@pytest.fixture(scope="module")
def seeded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis holding a valid config, shared by every case (each must leave it as it is)."""
    with RedisServer(directory=tmp_path_factory.mktemp("redis")) as server:
        seed = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshware.cli.main",
                "--redis-url",
                server.url,
                "apply",
                "-f",
                str(BOOKINFO / "destination-rule-all.yaml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert seed.returncode == 0, seed.stderr
        yield server


def test_there_are_at_least_twenty_cases() -> None:
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_apply_refuses_malformed_manifest(path: Path, seeded_redis: RedisServer) -> None:
    field_path, fragment, resource = malformed_expectation(path)
    client = redis.Redis.from_url(seeded_redis.url, decode_responses=True)
    before = _dump(client)
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshware.cli.main",
            "--redis-url",
            seeded_redis.url,
            "apply",
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    assert str(path) in proc.stderr, output
    if field_path:
        assert f": {field_path}: " in proc.stderr, output
    assert fragment in proc.stderr, output
    if resource:
        assert resource in proc.stderr, output
    assert _dump(client) == before
