"""Snapshots, ACK/NACK decisions and the on-disk last-known-good copy.

:class:`ConfigWatcher` is the sans-I/O heart of config sync: it is told which version the
control plane announces, says whether to fetch it, validates what was fetched, and either
swaps in a new immutable :class:`Snapshot` (one reference assignment: the request path
reads ``watcher.snapshot`` without locks) or records a NACK and keeps the last good one.
The Redis and file loops that feed it live in :mod:`meshware.config.channel`.

With a :class:`~meshware.security.signing.ConfigVerifier` (trusted operator keys), every
version from Redis or the on-disk copy must carry a valid operator signature and must not be
older than the held one (the replay rule); anything else is NACKed before it is even parsed.
A local config file (``MESHWARE_CONFIG``) is the operator's own and is not verified.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import Document, parse_documents
from meshware.config.record import ConfigHead, ConfigRecord, RawDocument, digest_documents
from meshware.errors import ConfigError, Problem
from meshware.security.signing import ConfigVerifier, UntrustedConfigError

log = logging.getLogger("meshware.config")

Source = Literal["none", "redis", "disk", "file"]
MAX_REASON = 2000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One applied config version, immutable; what the request path reads."""

    config: MeshConfig = field(default_factory=MeshConfig)
    epoch: str = ""
    version: int = 0
    digest: str = ""
    documents: tuple[RawDocument, ...] = ()
    source: Source = "none"
    applied_at: float = 0.0
    record: ConfigRecord | None = None
    """The version as stored (signature included); None for the empty snapshot."""

    @property
    def loaded(self) -> bool:
        return self.source != "none"

    @property
    def key_id(self) -> str:
        """The operator key that signed this version ("" when unsigned)."""
        return self.record.key_id if self.record is not None else ""

    @property
    def head(self) -> ConfigHead | None:
        """What the replay rule compares with: the held Redis (or disk) version, if any."""
        record = self.record
        if record is None or self.source not in ("redis", "disk"):
            return None
        return record.head


@dataclass(frozen=True, slots=True)
class Nack:
    """A version this instance rejected, and why."""

    epoch: str
    version: int
    reason: str
    digest: str = ""
    """The rejected version's announced digest: different content under the same number is
    looked at again (so a forged NACK cannot block a later genuine version)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`ConfigWatcher.offer` did: ``ack``, ``nack`` or ``unchanged``."""

    result: Literal["ack", "nack", "unchanged"]
    snapshot: Snapshot
    nack: Nack | None = None


def _reason(exc: ConfigError | UntrustedConfigError) -> str:
    text = str(exc)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class ConfigWatcher:
    """Holds the current snapshot and the last NACK; optionally persists last-known-good."""

    def __init__(
        self,
        *,
        lkg_path: Path | None = None,
        on_change: Callable[[Snapshot], None] | None = None,
        clock: Callable[[], float] = time.time,
        verifier: ConfigVerifier | None = None,
    ) -> None:
        self.snapshot = Snapshot()
        self.nack: Nack | None = None
        self.lkg_path = lkg_path
        self.verifier = verifier
        """Trusted operator keys; None accepts unsigned versions (local development)."""
        self._on_change = on_change
        self._clock = clock
        self._saved: ConfigRecord | None = None
        """The record last written to ``lkg_path``: it is not written again."""

    # -- decisions -----------------------------------------------------------------------

    def wants(self, epoch: str, version: int, digest: str = "") -> bool:
        """Should the announced (epoch, version) be fetched? Compared for equality only.

        A known ``digest`` that differs from the held one also counts as new, so content that
        changed under an unchanged number (a tampered hash) is looked at again. A NACKed version
        is not fetched again unless its digest is known to differ (a forged version must not
        block the genuine one that later gets the same number).
        """
        held = self.snapshot
        if (
            held.source == "redis"
            and held.epoch == epoch
            and held.version == version
            and (not digest or digest == held.digest)
        ):
            return False
        nack = self.nack
        return not (
            nack is not None
            and nack.epoch == epoch
            and nack.version == version
            and (not digest or not nack.digest or digest == nack.digest)
        )

    def offer(self, record: ConfigRecord, source: Source = "redis") -> Outcome:
        """Verify and validate ``record`` and swap it in (ACK), or keep the current snapshot (NACK)."""
        held = self.snapshot
        if (
            held.source == source
            and held.epoch == record.epoch
            and held.version == record.version
            and (not record.digest or record.digest == held.digest)
        ):
            return Outcome("unchanged", held)
        if self.verifier is not None and source != "file":
            try:
                key = self.verifier.verify(record, held=held.head)
            except UntrustedConfigError as exc:
                return self._nack(record, held, _reason(exc))
            log.debug("config v%s signed by trusted key %s", record.version, key.key_id)
        digest = digest_documents(record.documents)
        if held.loaded and held.digest == digest:
            # Same documents under a new number (e.g. Redis emptied and re-applied): no reparse.
            config = held.config
        else:
            try:
                config = compile_documents(record.documents, f"{source} v{record.version}")
            except ConfigError as exc:
                return self._nack(record, held, _reason(exc))
        snapshot = Snapshot(
            config=config,
            epoch=record.epoch,
            version=record.version,
            digest=record.digest or digest,
            documents=tuple(record.documents),
            source=source,
            applied_at=self._clock(),
            record=record,
        )
        self.snapshot = snapshot
        self.nack = None
        log.info("config v%s applied (%d resources, from %s)", record.version, len(config), source)
        if self._on_change is not None:
            self._on_change(snapshot)
        return Outcome("ack", snapshot)

    def _nack(self, record: ConfigRecord, held: Snapshot, reason: str) -> Outcome:
        nack = Nack(record.epoch, record.version, reason, record.digest)
        self.nack = nack
        log.error(
            "config v%s rejected (NACK), keeping v%s: %s", record.version, held.version, reason
        )
        return Outcome("nack", held, nack)

    def reject(self, epoch: str, version: int, reason: str) -> Nack:
        """Record a NACK for a version that could not even be decoded."""
        self.nack = Nack(epoch, version, reason[:MAX_REASON])
        log.error("config v%s rejected (NACK): %s", version, reason)
        return self.nack

    # -- last known good -----------------------------------------------------------------

    def save_last_known_good(self) -> None:
        """Write the current Redis snapshot to disk atomically.

        A no-op without a path, for a snapshot not from Redis, or when that very record was
        the last one written.
        """
        snap = self.snapshot
        if self.lkg_path is None or snap.source != "redis" or snap.record is None:
            return
        if snap.record is self._saved:
            return
        # The whole record, signature included: the copy is verified like a Redis version.
        payload = {"record": snap.record.to_hash(), "saved_at": self._clock()}
        try:
            self.lkg_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.lkg_path.with_name(f".{self.lkg_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(payload, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.lkg_path)
            self._saved = snap.record
        except OSError as exc:
            log.warning("cannot save last-known-good config to %s: %s", self.lkg_path, exc)

    def load_last_known_good(self) -> bool:
        """Start from the on-disk copy if there is a valid one; True when it was loaded."""
        if self.lkg_path is None or not self.lkg_path.exists():
            return False
        try:
            data = json.loads(self.lkg_path.read_text(encoding="utf-8"))
            if isinstance(data.get("record"), dict):
                record = ConfigRecord.from_hash(data["record"])
            else:  # written before records were saved whole: unsigned
                record = ConfigRecord(
                    epoch=str(data["epoch"]),
                    version=int(data["version"]),
                    documents=tuple(data["documents"]),
                    digest=str(data.get("digest", "")),
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable last-known-good config %s: %s", self.lkg_path, exc)
            return False
        outcome = self.offer(record, source="disk")
        if outcome.result == "nack":
            self.nack = None  # a bad disk copy is not a NACK of any live version
            return False
        return True


def compile_documents(documents: Sequence[RawDocument], source: str) -> MeshConfig:
    """Validate raw documents from the control plane into a :class:`MeshConfig`."""
    docs: list[Document] = []
    problems: list[Problem] = []
    for i, body in enumerate(documents, start=1):
        if isinstance(body, dict):
            docs.append(Document(body, source, i))
        else:
            problems.append(Problem("a resource must be a mapping", source=source, document=i))
    if problems:
        raise ConfigError(problems)
    return parse_documents(docs)
