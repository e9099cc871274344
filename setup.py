"""setuptools hook: the request path compiled with mypyc when ``MESHWARE_COMPILE=1``.

Everything else about the package is in pyproject.toml; see _build/hot_path.py.
"""

import sys
from pathlib import Path
from typing import Any

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "_build"))
from hot_path import HOT_MODULES, compile_requested


def ext_modules() -> list[Any]:
    if not compile_requested():
        return []
    from mypyc.build import mypycify

    return mypycify(list(HOT_MODULES), opt_level="3", debug_level="0")


setup(ext_modules=ext_modules())
