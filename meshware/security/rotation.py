"""Trust-bundle rotation of a CA directory, in three phases, without downtime.

A root cannot be replaced in one step: a workload trusts only the roots in its bundle, and
the bundle reaches each workload with its next certificate. So the new root is first
*added* beside the old one, then certificates are *switched* to the new root, and only then
is the old root *removed*::

    phase    trust bundle (root-cert.pem)   signing intermediate (ca-cert.pem)
    add      old roots + new root           old
    switch   old roots + new root           new (issued by the new root)
    remove   new root                       new

``add`` keeps the new root and intermediate in ``next/`` until they are in use; ``switch``
and ``remove`` move the replaced files to ``archive/<time>-<phase>/`` (keys stay 0600; delete
the archive when you no longer need it). ``ca.json`` records the phase and when it began.

**Wait at least one workload certificate lifetime (``ca serve --ttl``) after each phase**,
plus the renewal retry margin: after ``add`` until every workload renewed once and so holds
the new bundle; after ``switch`` until every certificate issued by the old intermediate has
been replaced; after ``remove`` before destroying the archived root, in case a workload that
was down must be re-enrolled. A running ``meshware ca serve`` notices each phase within a
second, without a restart. The CLI does not enforce the wait: it does not know the TTL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshware.security.ca import (
    CAError,
    CertificateAuthority,
    certificates_pem,
    fingerprint,
    load_pem_certificates,
    make_hierarchy,
    write_private,
    write_public,
)

__all__ = ["PHASES", "Phase", "RotationState", "rotate", "rotation_state"]

Phase = Literal["add", "switch", "remove"]
PHASES: tuple[Phase, ...] = ("add", "switch", "remove")
NEXT = "next"
ARCHIVE = "archive"


@dataclass(frozen=True, slots=True)
class RotationState:
    """Where a CA directory stands: ``phase`` is ``None`` (no rotation in progress),
    ``"added"`` or ``"switched"``."""

    phase: str | None
    since: str
    """When the current phase began (ISO 8601, UTC), or ``""``."""
    roots: tuple[str, ...]
    """SHA-256 fingerprints of the roots in the bundle, oldest first."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / "ca.json").read_text())
    except FileNotFoundError:
        raise CAError(f"{directory} is not a CA directory: missing ca.json") from None
    except (OSError, ValueError) as exc:
        raise CAError(f"{directory / 'ca.json'}: unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise CAError(f"{directory / 'ca.json'}: not a JSON object")
    return meta


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    write_public(directory / "ca.json", json.dumps(meta, indent=2).encode())


def rotation_state(directory: str | os.PathLike[str]) -> RotationState:
    path = Path(directory)
    meta = _read_meta(path)
    rotation = meta.get("rotation") or {}
    try:
        roots = load_pem_certificates((path / "root-cert.pem").read_bytes())
    except FileNotFoundError:
        raise CAError(f"{path} is not a CA directory: missing root-cert.pem") from None
    return RotationState(
        phase=rotation.get("phase"),
        since=str(rotation.get("since", "")),
        roots=tuple(fingerprint(root) for root in roots),
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One rotation command at a time per CA directory."""
    with (directory / ".rotation.lock").open("a") as handle:
        os.fchmod(handle.fileno(), 0o600)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _archive_dir(directory: Path, phase: str, now: dt.datetime) -> Path:
    base = directory / ARCHIVE / f"{now:%Y%m%dT%H%M%SZ}-{phase}"
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}.{n}")
    target.mkdir(parents=True, mode=0o700)
    return target


def rotate(
    directory: str | os.PathLike[str],
    phase: Phase,
    *,
    root_cert: bytes | None = None,
    root_key: bytes | None = None,
    now: dt.datetime | None = None,
) -> RotationState:
    """Run one phase (``add``, ``switch``, ``remove``) on a CA directory; returns the new state.

    ``add`` takes an operator's new root (``root_cert``/``root_key``) or makes one. Phases must
    come in order; anything else raises :class:`CAError` and changes nothing.
    """
    path = Path(directory)
    when = now or _now()
    CertificateAuthority.load(path)  # a complete, consistent CA before we touch anything
    with _locked(path):
        meta = _read_meta(path)
        current = (meta.get("rotation") or {}).get("phase")
        if phase == "add":
            if current is not None:
                raise CAError(f"a rotation is already in progress (phase {current!r})")
            _add(path, meta, when, root_cert, root_key)
        elif phase == "switch":
            if current != "added":
                raise CAError("switch comes after add (run: meshware ca rotate --phase add)")
            _switch(path, meta, when)
        elif phase == "remove":
            if current != "switched":
                raise CAError("remove comes after switch (run: meshware ca rotate --phase switch)")
            _remove(path, meta, when)
        else:
            raise CAError(f"unknown rotation phase {phase!r}: use add, switch or remove")
    CertificateAuthority.load(path)  # what a running service will load next
    return rotation_state(path)


def _add(
    path: Path,
    meta: dict[str, Any],
    when: dt.datetime,
    root_cert: bytes | None,
    root_key: bytes | None,
) -> None:
    hierarchy = make_hierarchy(str(meta["trust_domain"]), root_cert=root_cert, root_key=root_key)
    old_roots = load_pem_certificates((path / "root-cert.pem").read_bytes())
    new_root = load_pem_certificates(hierarchy.root_cert_pem)[0]
    if any(fingerprint(root) == fingerprint(new_root) for root in old_roots):
        raise CAError("the new root is already in the trust bundle")
    staged = path / NEXT
    staged.mkdir(mode=0o700, exist_ok=True)
    hierarchy.write(staged)
    write_public(path / "root-cert.pem", certificates_pem([*old_roots, new_root]))
    meta["rotation"] = {"phase": "added", "since": when.isoformat()}
    _write_meta(path, meta)


def _switch(path: Path, meta: dict[str, Any], when: dt.datetime) -> None:
    staged = path / NEXT
    archive = _archive_dir(path, "switch", when)
    write_public(archive / "ca-cert.pem", (path / "ca-cert.pem").read_bytes())
    write_private(archive / "ca-key.pem", (path / "ca-key.pem").read_bytes())
    # key first, then certificate: a reader in between sees a mismatch and keeps the old pair
    write_private(path / "ca-key.pem", (staged / "ca-key.pem").read_bytes())
    write_public(path / "ca-cert.pem", (staged / "ca-cert.pem").read_bytes())
    meta["rotation"] = {"phase": "switched", "since": when.isoformat()}
    _write_meta(path, meta)


def _remove(path: Path, meta: dict[str, Any], when: dt.datetime) -> None:
    staged = path / NEXT
    new_root_pem = (staged / "root-cert.pem").read_bytes()
    new_root = fingerprint(load_pem_certificates(new_root_pem)[0])
    bundle = load_pem_certificates((path / "root-cert.pem").read_bytes())
    archive = _archive_dir(path, "remove", when)
    write_public(
        archive / "root-cert.pem",
        certificates_pem([root for root in bundle if fingerprint(root) != new_root]),
    )
    old_key = path / "root-key.pem"
    if old_key.exists():
        write_private(archive / "root-key.pem", old_key.read_bytes())
    staged_key = staged / "root-key.pem"
    if staged_key.exists():
        write_private(old_key, staged_key.read_bytes())
    else:
        old_key.unlink(missing_ok=True)
    write_public(path / "root-cert.pem", new_root_pem)
    for name in ("root-cert.pem", "root-key.pem", "ca-cert.pem", "ca-key.pem"):
        (staged / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        staged.rmdir()
    meta.pop("rotation", None)
    meta["own_root"] = (path / "root-key.pem").exists()
    meta["rotated_at"] = when.isoformat()
    _write_meta(path, meta)
