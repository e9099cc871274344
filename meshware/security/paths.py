"""Request path normalisation for authorization, as Istio's ``DECODE_AND_MERGE_SLASHES``.

A policy on ``/admin*`` is only as strong as the path it is compared with: ``//admin``,
``/x/../admin``, ``/%61dmin`` and ``/%2e%2e/admin`` all reach ``/admin`` in most backends.
:func:`normalize_path` brings every spelling of a path to one canonical form before any
``paths``/``notPaths`` comparison, following Istio's authorization normalisation
(https://istio.io/latest/docs/reference/config/security/normalization/) with its strictest,
recommended option ``DECODE_AND_MERGE_SLASHES``:

1. Everything from the first ``?`` is dropped (the query is not part of the path). A ``#``
   anywhere is refused: a fragment is never part of a request target (RFC 3986 §3.5,
   RFC 9112 §3.2), and Envoy rejects it for the same reason.
2. The path must start with ``/`` (origin-form) and contain no control character, space or
   DEL; otherwise it is refused.
3. Each ``%HH`` escape is decoded once, never twice (``%252e`` stays ``%252e``, not ``.``):

   - ``%00`` → refused (Istio answers 400);
   - an escape that is not ``%`` followed by two hex digits → refused;
   - an unreserved character (``A-Z a-z 0-9 - . _ ~``) → decoded (RFC 3986 §6.2.2.2);
   - ``%2F`` and ``%5C`` (slash, backslash; any case) → ``/``;
   - anything else stays encoded with upper-case hex (RFC 3986 §6.2.2.1): ``%3a`` → ``%3A``.

4. A backslash ``\\`` becomes ``/``.
5. Runs of slashes are merged: ``//a///b`` → ``/a/b``.
6. ``.`` and ``..`` segments are resolved (RFC 3986 §5.2.4), never above the root:
   ``/a/./b/../c`` → ``/a/c``, ``/../a`` → ``/a``, ``/a/..`` → ``/``.

Case is kept: paths are case-sensitive, in Istio as in HTTP. Slashes are merged *before* dot
segments are resolved, so ``/a//../b`` is ``/b``, as a file system (and any backend that
collapses slashes) reads it; Envoy resolves dots first and gets ``/a/b``.

Give :func:`normalize_path` the path *as received* (ASGI ``scope["raw_path"]``, WSGI
``RAW_URI``/``REQUEST_URI``), never an already-decoded one (ASGI ``scope["path"]``, WSGI
``PATH_INFO``): decoding twice is how ``%252e%252e`` becomes ``..``.
"""

from __future__ import annotations

import re

__all__ = ["canonical_escapes", "normalize_path"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# A control character, space, DEL or '#': the request is refused.
_REFUSED = re.compile(r"[\x00-\x20\x7f#]")
_SLASHES = re.compile(r"/{2,}")
# Anything normalize_path may have to act on; a path without any is already canonical.
_SPECIAL = re.compile(r"[\x00-\x20\x7f#?%\\]|//|/\.")


def _decoding(code: int) -> str:
    """What the escape of byte ``code`` becomes: a character, an escape, or "" (refuse)."""
    if code == 0:
        return ""
    if code in _UNRESERVED:
        return chr(code)
    if code in (0x2F, 0x5C):
        return "/"
    return f"%{code:02X}"


# Every two-digit hex escape body, in any mix of cases ("2f", "2F", ...), → its decoding.
_DECODED: dict[str, str] = {
    high + low: _decoding(code)
    for code in range(256)
    for high in {f"{code:02x}"[0], f"{code:02X}"[0]}
    for low in {f"{code:02x}"[1], f"{code:02X}"[1]}
}


def _decode(path: str) -> str | None:
    """Step 3: every escape decoded or canonicalised once; None when one is invalid or NUL."""
    pieces = path.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        decoded = _DECODED.get(piece[:2])
        if not decoded:  # not two hex digits, or %00
            return None
        out.append(decoded)
        out.append(piece[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path without empty segments: never above the root."""
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    # A trailing "." or ".." names a directory: the result ends with "/".
    trailing = "/" if segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing if out else "/"


def normalize_path(raw: str) -> str | None:
    """The canonical form of a request path, or None to refuse the request (answer 400).

    See the module docstring for the exact steps. An ordinary path (nothing to strip,
    decode, merge or resolve) costs one regex scan and is returned as it is.
    """
    if raw.startswith("/") and _SPECIAL.search(raw) is None:
        return raw
    query = raw.find("?")
    if query >= 0:
        raw = raw[:query]
    if not raw.startswith("/") or _REFUSED.search(raw) is not None:
        return None
    path = raw
    if "%" in path:
        decoded = _decode(path)
        if decoded is None:
            return None
        path = decoded
    if "\\" in path:
        path = path.replace("\\", "/")
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def canonical_escapes(value: str) -> str:
    """A policy path value in the escape form of normalised paths (steps 3 and 4).

    Unreserved escapes are decoded, ``%2F``/``%5C`` and ``\\`` become ``/``, other escapes
    get upper-case hex. Malformed escapes are left as written (no normalised path contains
    them, so the value simply never matches). Slashes and dot segments are not touched: a
    prefix such as ``/static/.`` is not a complete path.
    """
    if "%" not in value and "\\" not in value:
        return value
    pieces = value.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        decoded = _DECODED.get(piece[:2])
        out.append(decoded + piece[2:] if decoded else "%" + piece)
    return "".join(out).replace("\\", "/")
