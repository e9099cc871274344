"""Small helpers shared by tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).parent / "data"
VALID = DATA / "valid"
MALFORMED = DATA / "malformed"


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
