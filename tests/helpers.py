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


def malformed_expectation(path: Path) -> tuple[str, str, str]:
    """``(field path, message fragment, resource)`` from a malformed manifest's header lines:
    ``# expect: <path> | <fragment>`` and optionally ``# resource: Kind/name`` ("" if absent)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("# expect:"), f"{path.name} lacks an '# expect:' header"
    field_path, sep, fragment = lines[0].removeprefix("# expect:").partition("|")
    assert sep, f"{path.name}: the expect line needs 'path | fragment'"
    resource = ""
    if len(lines) > 1 and lines[1].startswith("# resource:"):
        resource = lines[1].removeprefix("# resource:").strip()
    return field_path.strip(), fragment.strip(), resource


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
