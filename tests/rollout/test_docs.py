"""The YAML examples of docs/rollouts.md are complete, valid sets of resources."""

from __future__ import annotations

import pytest

from meshware.config.model.rollout import Rollout
from meshware.config.parse import load_yaml, parse_documents
from tests.helpers import ROOT
from tests.test_docs import Block, fenced_blocks

ROLLOUTS = ROOT / "docs" / "rollouts.md"
BLOCKS = [b for b in fenced_blocks(ROLLOUTS) if b.info == "yaml"]
BASE = next(b for b in BLOCKS if "kind: DestinationRule" in b.text).text


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line-{b.line}" for b in BLOCKS])
def test_yaml_example_is_valid(block: Block) -> None:
    text = block.text
    if "kind: DestinationRule" not in text:
        # A Rollout alone: checked with the subsets and route of the first example.
        base = BASE.split("---\napiVersion: meshware.io")[0]
        text = base + "---\n" + text
    config = parse_documents(load_yaml(text, str(ROLLOUTS)))
    assert config.of(Rollout)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 2
