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
from tests.helpers import MALFORMED

FILES = sorted(MALFORMED.glob("*.yaml"))


def _expectation(path: Path) -> tuple[str, str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, f"{path.name} is empty"
    assert lines[0].startswith("# expect:"), f"{path.name} lacks '# expect:'"
    field_path, sep, fragment = lines[0].removeprefix("# expect:").partition("|")
    assert sep, f"{path.name}: the expect line needs 'path | fragment'"
    resource = ""
    if len(lines) > 1 and lines[1].startswith("# resource:"):
        resource = lines[1].removeprefix("# resource:").strip()
    return field_path.strip(), fragment.strip(), resource


def test_there_are_networking_cases() -> None:
    assert len([f for f in FILES if f.name.startswith("net-")]) >= 16


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_malformed_manifest_is_rejected_with_its_path(path: Path) -> None:
    field_path, fragment, resource = _expectation(path)
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
