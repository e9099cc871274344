"""Every manifest in tests/data/malformed is rejected with the documented path and message.

Each file's first line is ``# expect: <field path> | <message fragment>`` (an empty path for
YAML syntax errors) and an optional second line ``# resource: Kind/name``. The files are loaded
and validated exactly as ``meshware apply`` does before touching Redis: one problem must name
the file, the resource, the field path and carry the message fragment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshware.config.parse import load_files, parse_documents
from meshware.errors import ConfigError
from tests.helpers import MALFORMED, malformed_expectation

FILES = sorted(MALFORMED.glob("*.yaml"))


def test_there_are_networking_cases() -> None:
    assert len([f for f in FILES if f.name.startswith("net-")]) >= 16


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_malformed_manifest_is_rejected_with_its_path(path: Path) -> None:
    field_path, fragment, resource = malformed_expectation(path)
    assert fragment, f"{path.name}: empty message fragment"
    with pytest.raises(ConfigError) as caught:
        parse_documents(load_files([path]))
    rendered = [str(problem) for problem in caught.value.problems]

    def fits(text: str) -> bool:
        return (
            path.name in text
            and fragment in text
            and (not field_path or f": {field_path}: " in text)
            and (not resource or resource in text)
        )

    assert any(fits(text) for text in rendered), "\n".join(rendered)
