"""The YAML examples in the documentation stay honest.

Every fenced block whose info string is exactly ``yaml`` in docs/configuration.md (and in
README.md, if it has any) must be a complete, valid set of resources, whole-mesh checks
included; every block fenced ``yaml invalid`` must be rejected with a ConfigError. When an
invalid block is followed by a ``text`` block that starts with ``$ meshware apply -f NAME``,
the problems listed there must be exactly the ones the parser reports for the block as NAME.
No Redis is involved: this is the validation ``meshware apply`` runs before touching it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import pytest

from meshware.config.parse import KINDS, load_yaml, parse_documents
from meshware.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCUMENTS = (
    CONFIGURATION,
    ROOT / "README.md",
    ROOT / "docs" / "routing.md",
    ROOT / "docs" / "inbound.md",
    ROOT / "docs" / "tracing.md",
    ROOT / "docs" / "security.md",
    ROOT / "docs" / "metrics.md",
)

_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_APPLY = re.compile(r"^\$ meshware apply -f (?P<source>\S+)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    heading: str
    info: str
    text: str
    line: int
    """1-based line of the opening fence, for failure messages."""
    case_id: str = ""
    """``file:heading:index`` (the index counts blocks of one info string under a heading)."""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Transcript:
    """A ``yaml invalid`` block followed by the ``meshware apply`` output pasted for it."""

    block: Block
    source: str
    """The file name given to ``meshware apply -f``, which the messages start with."""
    output: list[str]
    """The pasted lines after the command."""


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with the heading it sits under (CommonMark fences)."""
    blocks: list[Block] = []
    heading = path.stem
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            title = _HEADING.match(lines[i])
            if title is not None:
                heading = title.group("title")
            i += 1
            continue
        fence = opening.group("fence")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = lines[i].strip()
            if closing.startswith(fence) and set(closing) == {fence[0]}:
                break
            body.append(lines[i])
            i += 1
        text = "\n".join(body) + "\n"
        blocks.append(Block(path, heading, opening.group("info").strip(), text, start + 1))
        i += 1
    return blocks


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "top"


def _cases(info: str) -> list[Block]:
    """Every block with info string exactly ``info``, each with its test id."""
    cases: list[Block] = []
    for path in DOCUMENTS:
        if not path.exists():
            continue
        counts: dict[str, int] = {}
        for block in fenced_blocks(path):
            if block.info != info:
                continue
            slug = _slug(block.heading)
            counts[slug] = counts.get(slug, 0) + 1
            cases.append(replace(block, case_id=f"{path.stem}:{slug}:{counts[slug]}"))
    return cases


VALID = _cases("yaml")
INVALID = _cases("yaml invalid")


def _render(error: ConfigError) -> str:
    return "\n".join(f"  - {problem}" for problem in error.problems)


@pytest.mark.parametrize("block", VALID, ids=[b.case_id for b in VALID])
def test_yaml_example_is_valid(block: Block) -> None:
    try:
        config = parse_documents(load_yaml(block.text, block.where))
    except ConfigError as exc:
        pytest.fail(f"the example at {block.where} is invalid:\n{_render(exc)}")
    assert len(config) > 0, f"the example at {block.where} holds no resources"


@pytest.mark.parametrize("block", INVALID, ids=[b.case_id for b in INVALID])
def test_invalid_yaml_example_is_rejected(block: Block) -> None:
    with pytest.raises(ConfigError):
        parse_documents(load_yaml(block.text, block.where))


def _apply_transcripts() -> list[Transcript]:
    """Each ``yaml invalid`` block directly followed by ``$ meshware apply -f NAME`` output."""
    transcripts: list[Transcript] = []
    blocks = fenced_blocks(CONFIGURATION)
    for block, after in pairwise(blocks):
        if block.info != "yaml invalid" or after.info != "text":
            continue
        lines = after.text.splitlines()
        command = _APPLY.match(lines[0]) if lines else None
        if command is None:
            continue
        transcripts.append(Transcript(block, command.group("source"), lines[1:]))
    return transcripts


TRANSCRIPTS = _apply_transcripts()


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=[t.source for t in TRANSCRIPTS])
def test_pasted_apply_output_matches_the_parser(transcript: Transcript) -> None:
    where = transcript.block.where
    assert transcript.output[:1] == ["error: invalid configuration"], f"{where}: not an error"
    expected = transcript.output[1:]
    assert expected, f"the output pasted after {where} lists no problems"
    with pytest.raises(ConfigError) as caught:
        parse_documents(load_yaml(transcript.block.text, transcript.source))
    assert _render(caught.value).splitlines() == expected


def test_the_reference_has_examples_of_each_kind() -> None:
    kinds: set[str] = set()
    for block in VALID:
        try:
            config = parse_documents(load_yaml(block.text))
        except ConfigError:
            continue  # reported by test_yaml_example_is_valid
        kinds.update(resource.kind for resource in config)
    assert kinds >= set(KINDS), f"no valid example of {sorted(set(KINDS) - kinds)}"
    assert INVALID, "the reference shows no invalid example"
    assert TRANSCRIPTS, "the reference shows no meshware apply output"


def test_the_reference_names_every_kind_and_api_version() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (.+)$", text, re.MULTILINE))
    for kind, spec in KINDS.items():
        assert kind in headings, f"docs/configuration.md has no '## {kind}' section"
        for api_version in spec.api_versions:
            assert f"`{api_version}`" in text, f"{api_version} is not listed"
