"""Parsers for the scalar value formats Istio uses: durations, regexes, DNS names.

Each ``parse_*`` function takes an untrusted value and returns the typed value or raises
``ValueError`` with a message meant for a human (the caller adds the field path).
"""

from __future__ import annotations

import re
from typing import Any

from meshware.config.parse.reader import Node, type_name

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: Any) -> float:
    """A Go/protobuf duration string (``"1.5s"``, ``"100ms"``, ``"1m30s"``) → seconds."""
    if not isinstance(value, str):
        raise ValueError(
            f"must be a duration string like '1.5s' or '100ms', got {type_name(value)} {value!r}"
        )
    text = value.strip()
    if text in ("0", ""):
        if text == "":
            raise ValueError("must be a duration like '1.5s' or '100ms', got an empty string")
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: use a number and a unit (ns, us, ms, s, m, h), e.g. '1.5s'"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


def duration(
    node: Node,
    key: str,
    *,
    required: bool = False,
    minimum: float = 0.001,
    allow_zero: bool = False,
) -> float | None:
    """Read a duration field in seconds; Istio requires whole milliseconds and at least 1 ms."""
    if not node.has(key):
        node.raw(key)
        if required:
            node.error(key, "is required")
        return None
    seconds = node.value(key, parse_duration, -1.0)
    if seconds < 0:
        return None
    if seconds == 0 and allow_zero:
        return 0.0
    if seconds < minimum:
        node.error(key, f"must be at least {_format_seconds(minimum)}, got {node.data[key]!r}")
        return None
    if abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
        node.error(key, f"only millisecond precision is supported, got {node.data[key]!r}")
        return None
    return seconds


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


# Constructs Python's `re` accepts but RE2 (Envoy's regex engine, hence Istio's) rejects.
_RE2_UNSUPPORTED = (
    ("(?=", "lookahead"),
    ("(?!", "negative lookahead"),
    ("(?<=", "lookbehind"),
    ("(?<!", "negative lookbehind"),
    ("(?>", "atomic groups"),
    ("(?(", "conditionals"),
    ("(?#", "comments"),
    ("(?P=", "named backreferences"),
)


def parse_regex(value: Any) -> str:
    """Check that ``value`` is a regex in the RE2 syntax subset that Python also compiles."""
    if not isinstance(value, str):
        raise ValueError(f"must be a regular expression string, got {type_name(value)}")
    _check_re2(value)
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _check_re2(pattern: str) -> None:
    i = 0
    in_class = False
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if not in_class and nxt.isdigit() and nxt != "0":
                raise ValueError(
                    f"invalid regular expression {pattern!r}: backreferences are not supported by RE2"
                )
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            # a ']' right after '[' or '[^' is a literal
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            i = j
            continue
        if c == "(":
            for token, what in _RE2_UNSUPPORTED:
                if pattern.startswith(token, i):
                    raise ValueError(
                        f"invalid regular expression {pattern!r}: {what} are not supported by RE2"
                    )
        if c in "*+?}" and i + 1 < n and pattern[i + 1] == "+":
            raise ValueError(
                f"invalid regular expression {pattern!r}: possessive quantifiers are not supported by RE2"
            )
        i += 1


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_resource_name(value: Any) -> str:
    """A Kubernetes object name: a DNS-1123 subdomain of at most 253 characters."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"invalid name {value!r}: use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (DNS-1123)"
        )
    return value


def parse_namespace(value: Any) -> str:
    """A Kubernetes namespace: a DNS-1123 label of at most 63 characters."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value or len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(f"invalid namespace {value!r}: must be a DNS-1123 label")
    return value


_HOST = re.compile(
    r"^(\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*\.?)$"
)


def parse_host(value: Any) -> str:
    """A service host: a DNS name, optionally with a leading ``*.`` wildcard, or ``*``."""
    if not isinstance(value, str):
        raise ValueError(f"must be a host name string, got {type_name(value)}")
    if not value or len(value) > 253 or not _HOST.match(value):
        raise ValueError(
            f"invalid host {value!r}: must be a DNS name, optionally starting with '*.'"
        )
    return value.lower().rstrip(".")
