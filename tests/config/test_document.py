"""Loading YAML text into documents: streams, lists, duplicate keys, merges, syntax errors."""

from __future__ import annotations

import pytest

from meshware.config.parse import load_yaml
from meshware.errors import ConfigError


def test_multi_document_stream_skips_empty_documents() -> None:
    docs = load_yaml("a: 1\n---\n---\nb: 2\n", "x.yaml")
    assert [d.body for d in docs] == [{"a": 1}, {"b": 2}]
    assert [d.index for d in docs] == [1, 3]
    assert {d.source for d in docs} == {"x.yaml"}


def test_json_array_and_kubernetes_list_are_expanded() -> None:
    assert [d.body for d in load_yaml('[{"a": 1}, {"b": 2}]')] == [{"a": 1}, {"b": 2}]
    listed = load_yaml("apiVersion: v1\nkind: List\nitems:\n- {a: 1}\n- {b: 2}\n")
    assert [d.body for d in listed] == [{"a": 1}, {"b": 2}]


def test_duplicate_keys_are_rejected_with_their_line() -> None:
    with pytest.raises(ConfigError, match=r"line 4, column 3: duplicate key 'host'"):
        load_yaml("spec:\n  host: reviews\n  subset: v1\n  host: ratings\n", "dup.yaml")


def test_merge_keys_may_be_overridden() -> None:
    (doc,) = load_yaml("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  b: 3\n")
    assert doc.body["x"] == {"a": 1, "b": 3}


def test_timestamps_stay_strings() -> None:
    (doc,) = load_yaml("metadata: {creationTimestamp: 2024-01-02T03:04:05Z}\n")
    assert doc.body["metadata"]["creationTimestamp"] == "2024-01-02T03:04:05Z"


def test_syntax_error_and_scalar_documents() -> None:
    with pytest.raises(ConfigError, match=r"bad\.yaml \(document 1\): YAML syntax error at line 2"):
        load_yaml("a: [1\n", "bad.yaml")
    with pytest.raises(ConfigError, match="a resource must be a mapping, got string"):
        load_yaml("just text\n", "text.yaml")
