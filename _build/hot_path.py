"""The modules every request runs through, and the optional mypyc build of them.

``MESHWARE_COMPILE=1 pip install .`` (a wheel, never an editable install) compiles these
modules with mypyc; the rest of the package stays Python. The package is ``mypy --strict``
clean, which is what mypyc needs; the compiled modules behave as the Python ones do and the
test suite runs the request path against a compiled build (``tests/test_compiled.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ENV = "MESHWARE_COMPILE"

HOT_MODULES = (
    # caller: the mesh client's transport, routing and resilience decisions
    "meshware/transport/aio.py",
    "meshware/transport/outbound.py",
    "meshware/transport/shared.py",
    "meshware/transport/pools.py",
    "meshware/transport/endpoint.py",
    "meshware/routing/table.py",
    "meshware/routing/request.py",
    "meshware/routing/select.py",
    "meshware/routing/balance.py",
    "meshware/routing/match.py",
    "meshware/resilience/retry.py",
    "meshware/resilience/limits.py",
    "meshware/resilience/outlier.py",
    # both sides: request context, propagation headers, golden metrics, peer metadata
    "meshware/middleware/context.py",
    "meshware/telemetry/calls.py",
    "meshware/telemetry/metrics.py",
    "meshware/telemetry/meters.py",
    "meshware/telemetry/peers.py",
    "meshware/telemetry/flags.py",
    # server: the ASGI middleware
    "meshware/middleware/asgi.py",
)


def hot_module_names() -> list[str]:
    """:data:`HOT_MODULES` as dotted module names."""
    return [path.removesuffix(".py").replace("/", ".") for path in HOT_MODULES]


PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "_build", "meshware")


def compile_requested() -> bool:
    """Is the compiled build asked for (``MESHWARE_COMPILE`` set to 1/true/yes/on)?"""
    return os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def build_compiled(root: Path, dest: Path) -> Path:
    """Build a compiled wheel of the project at ``root`` and unpack it into ``dest``.

    The sources are copied first so the build leaves ``root`` untouched. Returns ``dest``,
    ready to be put first on ``sys.path``.
    """
    source = dest.parent / f"{dest.name}-src"
    wheels = dest.parent / f"{dest.name}-wheel"
    for path in (source, wheels, dest):
        shutil.rmtree(path, ignore_errors=True)
    source.mkdir(parents=True)
    for name in PROJECT_FILES:
        origin = root / name
        if origin.is_dir():
            shutil.copytree(
                origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so")
            )
        else:
            shutil.copy2(origin, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels)]
    proc = subprocess.run(
        [*command, str(source)],
        check=False,
        env={**os.environ, ENV: "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the compiled wheel did not build:\n{proc.stdout[-4000:]}")
    (wheel,) = wheels.glob("meshware-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    shutil.rmtree(source, ignore_errors=True)
    return dest
