"""``--compiled`` for the benches: measure the mypyc-compiled build instead of the sources.

A bench calls :func:`prefer_compiled` before it imports ``meshware``. With ``--compiled`` on
its command line, the bench builds a ``MESHWARE_COMPILE=1`` wheel into a temporary directory
(a few minutes) and runs itself again with that build first on ``sys.path``; the processes
it starts get the same build through :func:`python_command` and :func:`child_env`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = "MESHWARE_BENCH_COMPILED_TREE"
FLAG = "--compiled"
HELP = "build a MESHWARE_COMPILE=1 wheel (mypyc, a few minutes) and measure that build"


def prefer_compiled() -> None:
    """Put the compiled build first (when this is the re-run), or build it and re-run."""
    tree = os.environ.get(TREE)
    if tree:
        sys.path.insert(0, tree)
        import meshware  # bound now: submodules come from its directory whatever sys.path says

        del meshware
        return
    if FLAG not in sys.argv[1:]:
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from _build.hot_path import build_compiled

    with tempfile.TemporaryDirectory() as scratch:
        print("building the compiled wheel ...", flush=True)
        built = build_compiled(ROOT, Path(scratch) / "tree")
        argv = [sys.executable, sys.argv[0], *sys.argv[1:]]
        env = {**os.environ, TREE: str(built)}
        sys.exit(subprocess.run(argv, env=env, check=False).returncode)


def python_command() -> list[str]:
    """How to start a Python child that imports the same build as this process."""
    # -P: not the working directory first (the benches start children in ROOT, whose
    # meshware/ would shadow the compiled one); child_env puts ROOT after the build instead
    return [sys.executable, "-P"] if os.environ.get(TREE) else [sys.executable]


def uvicorn_app_dir() -> list[str]:
    """uvicorn options for a child on the same build: uvicorn puts ``--app-dir`` (default:
    the working directory, ROOT, whose meshware/ is the source) first on ``sys.path``."""
    tree = os.environ.get(TREE)
    return ["--app-dir", tree] if tree else []


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the compiled build first on the path."""
    base = dict(os.environ if env is None else env)
    tree = os.environ.get(TREE)
    if tree:
        base["PYTHONPATH"] = os.pathsep.join([tree, str(ROOT)])
    return base


def build_of() -> str:
    """Which meshware this process runs: the compiled hot modules, or Python throughout."""
    from _build.hot_path import hot_module_names

    modules = hot_module_names()
    compiled = [name for name in modules if str(import_module(name).__file__).endswith(".so")]
    if not compiled:
        return "pure Python"
    return f"{len(compiled)} of {len(modules)} hot modules compiled with mypyc"
