"""Markers for the security tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: a long end-to-end run (tens of seconds); part of the default run, "
        "deselect with -m 'not slow'",
    )
