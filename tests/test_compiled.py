"""The mypyc-compiled request path behaves as the Python one.

A ``MESHWARE_COMPILE=1`` wheel is built (as ``pip install .`` would build it), unpacked, and
the request-path tests run against it in a subprocess whose ``meshware`` is the compiled one,
servers started by those tests included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _build.hot_path import build_compiled, hot_module_names
from tests.helpers import ROOT

# The suites that drive the compiled modules: both sides of a call, routing, resilience and
# telemetry, Bookinfo end to end.
SUITES = (
    "tests/transport",
    "tests/routing",
    "tests/resilience",
    "tests/middleware",
    "tests/telemetry",
    "tests/test_bookinfo.py",
)
COPIED = ("tests", "examples", "bench", "docs", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unpacked compiled wheel, with the test tree beside it (but not the sources)."""
    tree = build_compiled(ROOT, tmp_path_factory.mktemp("compiled") / "tree")
    for name in COPIED:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, tree / name)
    return tree


def run_in(tree: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(900)
def test_the_wheel_compiles_every_hot_module_and_nothing_else(compiled: Path) -> None:
    modules = hot_module_names()
    probe = "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    proc = run_in(compiled, "-c", probe, *modules, "meshware.mesh", timeout=60)
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split()
    assert len(files) == len(modules) + 1
    for name, file in zip(modules, files[:-1], strict=True):
        assert file.startswith(str(compiled)), (name, file)
        assert file.endswith(".so"), f"{name} is not compiled: {file}"
    assert files[-1] == str(compiled / "meshware" / "mesh.py")  # the rest stays Python


@pytest.mark.timeout(1800)
def test_the_request_path_tests_pass_against_the_compiled_build(compiled: Path) -> None:
    proc = run_in(compiled, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
