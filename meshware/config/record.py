"""A stored config version: what ``meshware apply`` writes and instances read back.

Redis holds the raw documents (as applied, JSON-normalised); instances validate them again
on arrival, so a document written into Redis by hand cannot skip validation. A version may
carry an operator's Ed25519 signature (``key_id``, ``signature``; see
:mod:`meshware.security.signing`); instances that trust operator keys refuse it without one.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshware.config.model.common import DEFAULT_NAMESPACE, ResourceKey

RawDocument = Mapping[str, Any]


def new_epoch() -> str:
    """A fresh epoch id: versions are only ordered within one epoch.

    A Redis that restarts empty starts numbering at 1 again under a new epoch, so instances
    compare (epoch, version) for *equality* and never ignore a config for having a lower number.
    """
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def documents_sha256(documents: Sequence[RawDocument]) -> str:
    """The full SHA-256 (hex) of the documents' canonical JSON: what a signature covers."""
    return hashlib.sha256(canonical_json(list(documents)).encode()).hexdigest()


def digest_documents(documents: Sequence[RawDocument]) -> str:
    """Short content hash of a set of documents (a change detector, not a security check)."""
    return documents_sha256(documents)[:16]


def document_key(document: RawDocument) -> ResourceKey:
    """The (kind, namespace, name) of a raw document; only call on validated documents."""
    meta = document.get("metadata") or {}
    return ResourceKey(
        str(document.get("kind", "")),
        str(meta.get("namespace") or DEFAULT_NAMESPACE),
        str(meta.get("name", "")),
    )


def sort_documents(documents: Sequence[RawDocument]) -> tuple[RawDocument, ...]:
    return tuple(sorted(documents, key=document_key))


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{os.uname().nodename}"


@dataclass(frozen=True, slots=True)
class ConfigHead:
    """The identifying fields of the current version, readable even if its documents are not."""

    epoch: str
    version: int
    action: str = ""
    actor: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    """One config version as stored in Redis (current hash and history entries)."""

    epoch: str
    version: int
    documents: tuple[RawDocument, ...]
    digest: str
    created_at: float = 0.0
    action: str = "apply"
    actor: str = ""
    summary: str = ""
    changes: tuple[tuple[str, str], ...] = field(default=())
    """(change, ``Kind/name``) pairs: created, configured, deleted."""
    key_id: str = ""
    """Id of the operator key that signed this version; empty when unsigned."""
    signature: str = ""
    """Base64 Ed25519 signature over :func:`~meshware.security.signing.signed_message`."""

    @property
    def signed(self) -> bool:
        return bool(self.key_id or self.signature)

    @property
    def head(self) -> ConfigHead:
        return ConfigHead(self.epoch, self.version, self.action, self.actor, self.created_at)

    def to_hash(self) -> dict[str, str]:
        return {
            "epoch": self.epoch,
            "version": str(self.version),
            "digest": self.digest,
            "documents": canonical_json(list(self.documents)),
            "created_at": repr(self.created_at),
            "action": self.action,
            "actor": self.actor,
            "summary": self.summary,
            "changes": canonical_json([list(c) for c in self.changes]),
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def to_json(self) -> str:
        return canonical_json(self.to_hash())

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> ConfigRecord:
        """Decode a record; raises ``ValueError`` if any field is missing or malformed."""
        try:
            documents = json.loads(data["documents"])
            if not isinstance(documents, list):
                raise ValueError("documents is not a JSON list")
            changes = json.loads(data.get("changes") or "[]")
            return cls(
                epoch=data["epoch"],
                version=int(data["version"]),
                documents=tuple(documents),
                digest=data.get("digest", ""),
                created_at=float(data.get("created_at") or 0.0),
                action=data.get("action", "apply"),
                actor=data.get("actor", ""),
                summary=data.get("summary", ""),
                changes=tuple((str(a), str(b)) for a, b in changes),
                key_id=str(data.get("key_id") or ""),
                signature=str(data.get("signature") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed config record: missing or bad field {exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed config record: invalid JSON ({exc})") from None

    @classmethod
    def from_json(cls, text: str) -> ConfigRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed history entry: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("malformed history entry: not an object")
        return cls.from_hash(data)
