"""Small helpers shared by tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOKINFO = ROOT / "examples" / "bookinfo" / "manifests"
DATA = Path(__file__).parent / "data"
VALID = DATA / "valid"
MALFORMED = DATA / "malformed"


def manifest(name: str) -> Path:
    """A valid manifest: a Bookinfo example, or a test-only one from tests/data/valid."""
    example = BOOKINFO / name
    return example if example.exists() else VALID / name


def valid_manifests() -> list[Path]:
    return sorted([*BOOKINFO.glob("*.yaml"), *VALID.glob("*.yaml")])


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (a bound, never a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
