"""PEP 517 backend: setuptools, plus mypy in the build environment of a compiled wheel.

A plain install needs nothing beyond setuptools. ``MESHWARE_COMPILE=1`` adds mypy (which
carries mypyc) to the wheel's build requirements. An editable install is never compiled: a
compiled module beside its source would keep running the old code after an edit.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hot_path import ENV, compile_requested
from setuptools import build_meta as _setuptools
from setuptools.build_meta import (
    build_sdist,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

MYPYC = "mypy>=1.10"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    if not compile_requested():
        requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
        return requires
    # setuptools runs setup.py to find its requirements, before mypyc is installed
    os.environ[ENV] = "0"
    try:
        requires = _setuptools.get_requires_for_build_wheel(config_settings)
    finally:
        os.environ[ENV] = "1"
    return [*requires, MYPYC]


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    name: str = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return name


def _not_for_editable() -> None:
    """Turn the option off in this hook's process (pip runs each hook in a fresh one)."""
    if compile_requested():
        print(
            f"meshware: {ENV} is ignored for an editable install (a compiled module would "
            "shadow later edits of its source); build a wheel with `pip install .` instead",
            file=sys.stderr,
        )
        os.environ[ENV] = "0"


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    _not_for_editable()
    requires: list[str] = _setuptools.get_requires_for_build_editable(config_settings)
    return requires


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    _not_for_editable()
    name: str = _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)
    return name


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _not_for_editable()
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
