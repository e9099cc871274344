"""The control plane's write side: versioned, validated config in Redis.

Every change (apply, delete, rollback) is one optimistic transaction: WATCH the current
version, build and validate the whole resulting mesh config, then atomically store it as the
next version, push it onto the history, and publish a change event. Invalid config never
reaches Redis; a concurrent writer makes us retry from the new current version.

With an operator key (``signer``) every new version is signed inside the transaction. A signed
change never builds on content it cannot vouch for: the version it starts from (the current
one, or a rollback's target) must verify against the trusted keys (by default the signer's
own), and the current version must be the newest one in the history. Otherwise an edit made
straight in Redis would be laundered by the operator's next signature.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from meshware.config.connection import for_hset, sync_client, text, text_map, translate_errors
from meshware.config.keys import HISTORY_LIMIT, Keys
from meshware.config.model.common import ResourceKey
from meshware.config.model.mesh import MeshConfig
from meshware.config.parse import Document, parse_document, parse_documents
from meshware.config.record import (
    ConfigHead,
    ConfigRecord,
    RawDocument,
    canonical_json,
    default_actor,
    digest_documents,
    document_key,
    new_epoch,
    sort_documents,
)
from meshware.errors import (
    ApplyConflictError,
    ConfigError,
    ControlPlaneError,
    NotFoundError,
    Problem,
)
from meshware.security.signing import (
    ConfigVerifier,
    OperatorKey,
    SigningError,
    UntrustedConfigError,
)

_OUTPUT_ONLY_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
)
_MAX_ATTEMPTS = 20


def normalise_document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a document: output-only fields dropped, JSON-clean."""
    doc = {k: v for k, v in body.items() if k != "status"}
    meta = doc.get("metadata")
    if isinstance(meta, Mapping):
        doc["metadata"] = {k: v for k, v in meta.items() if k not in _OUTPUT_ONLY_METADATA}
    normalised: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return normalised


@dataclass(frozen=True, slots=True)
class Change:
    """What a change does to one resource: ``created``, ``configured``, ``unchanged``, ``deleted``."""

    action: str
    key: ResourceKey
    before: RawDocument | None
    after: RawDocument | None


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """Outcome of apply/delete/rollback: the stored record (None when nothing changed or dry run)."""

    changes: tuple[Change, ...]
    record: ConfigRecord | None
    previous: ConfigRecord | None
    config: MeshConfig

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


def diff_documents(
    before: Sequence[RawDocument],
    after: Sequence[RawDocument],
    *,
    touched: set[ResourceKey] | None = None,
) -> tuple[Change, ...]:
    """Per-resource changes from ``before`` to ``after``; ``touched`` keys are reported even if unchanged."""
    old = {document_key(d): d for d in before}
    new = {document_key(d): d for d in after}
    changes: list[Change] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a is None:
            changes.append(Change("created", key, None, b))
        elif b is None:
            changes.append(Change("deleted", key, a, None))
        elif canonical_json(a) != canonical_json(b):
            changes.append(Change("configured", key, a, b))
        elif touched is None or key in touched:
            changes.append(Change("unchanged", key, a, b))
    return tuple(changes)


def _summary(changes: Sequence[Change]) -> str:
    counts: dict[str, int] = {}
    for change in changes:
        if change.action != "unchanged":
            counts[change.action] = counts.get(change.action, 0) + 1
    return ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "no changes"


# A mutation maps the current head and record to (new documents, action, touched keys).
Mutation = Callable[
    [ConfigHead | None, ConfigRecord | None],
    tuple[Sequence[RawDocument], str, set[ResourceKey] | None],
]


class ConfigStore:
    """Read and change the versioned config of one mesh in one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        mesh: str = "default",
        url: str = "redis",
        signer: OperatorKey | None = None,
        trusted: ConfigVerifier | None = None,
        adopt_unsigned: bool = False,
    ) -> None:
        """``signer`` signs every new version; ``trusted`` (default: the signer's own key)
        decides which versions a signed change may start from; ``adopt_unsigned`` lets a
        signed change start from an unsigned version once (switching a mesh to signed config).
        """
        self.client = client
        self.keys = Keys(mesh)
        self.url = url
        self.signer = signer
        self.adopt_unsigned = adopt_unsigned
        if trusted is None and signer is not None:
            trusted = ConfigVerifier([signer.public], mesh=mesh)
        self.trusted = trusted

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        mesh: str = "default",
        signer: OperatorKey | None = None,
        trusted: ConfigVerifier | None = None,
        adopt_unsigned: bool = False,
    ) -> ConfigStore:
        return cls(
            sync_client(url),
            mesh=mesh,
            url=url,
            signer=signer,
            trusted=trusted,
            adopt_unsigned=adopt_unsigned,
        )

    def close(self) -> None:
        self.client.close()

    # -- reading -------------------------------------------------------------------------

    def current(self) -> ConfigRecord | None:
        """The current version, or None when nothing was ever applied (or Redis was emptied)."""
        with translate_errors(self.url):
            data = self.client.hgetall(self.keys.config)
        if not data:
            return None
        try:
            return ConfigRecord.from_hash(text_map(data))
        except ValueError as exc:
            raise ControlPlaneError(f"the current config in Redis is unreadable: {exc}") from exc

    def head(self) -> ConfigHead | None:
        """Epoch and version of the current config (works even when its documents are bad)."""
        with translate_errors(self.url):
            epoch, version, action, actor, created = (
                text(v) if v is not None else None
                for v in self.client.hmget(
                    self.keys.config, ["epoch", "version", "action", "actor", "created_at"]
                )
            )
        if epoch is None:
            return None
        try:
            return ConfigHead(
                epoch, int(version or ""), action or "", actor or "", float(created or 0)
            )
        except ValueError as exc:
            raise ControlPlaneError(f"the current config in Redis is unreadable: {exc}") from exc

    def history(self, limit: int = HISTORY_LIMIT) -> list[ConfigRecord]:
        """Stored versions, newest first (unreadable entries are skipped)."""
        with translate_errors(self.url):
            raw = self.client.lrange(self.keys.history, 0, max(limit, 1) - 1)
        records: list[ConfigRecord] = []
        for entry in raw:
            try:
                records.append(ConfigRecord.from_json(text(entry)))
            except ValueError:
                continue
        return records

    def newest_in_history(self) -> ConfigRecord | None:
        """The newest history entry (the current version, unless Redis was edited by hand)."""
        with translate_errors(self.url):
            raw = self.client.lindex(self.keys.history, 0)
        if raw is None:
            return None
        try:
            return ConfigRecord.from_json(text(raw))
        except ValueError:
            return None

    def version(self, number: int) -> ConfigRecord:
        head = self.head()
        for record in self.history():
            if record.version == number and (head is None or record.epoch == head.epoch):
                return record
        raise NotFoundError(
            f"config version {number} is not in the history (it keeps the last {HISTORY_LIMIT})"
        )

    # -- changing ------------------------------------------------------------------------

    def apply(
        self,
        documents: Sequence[Document],
        *,
        dry_run: bool = False,
        actor: str | None = None,
    ) -> ChangeResult:
        """Merge ``documents`` into the current config (create or replace by kind/name)."""
        incoming = [normalise_document(d.body) for d in documents]
        sources = {document_key(n): d for n, d in zip(incoming, documents, strict=True)}
        sources_as_docs = {document_key(n): n for n in incoming}
        check_documents(documents)

        def mutate(
            head: ConfigHead | None, current: ConfigRecord | None
        ) -> tuple[Sequence[RawDocument], str, set[ResourceKey] | None]:
            merged = {document_key(d): d for d in (current.documents if current else ())}
            merged.update(sources_as_docs)
            return list(merged.values()), "apply", set(sources_as_docs)

        return self._change(mutate, dry_run=dry_run, actor=actor, origins=sources)

    def delete(
        self, key: ResourceKey, *, dry_run: bool = False, actor: str | None = None
    ) -> ChangeResult:
        """Remove one resource; the remaining mesh must still be valid."""

        def mutate(
            head: ConfigHead | None, current: ConfigRecord | None
        ) -> tuple[Sequence[RawDocument], str, set[ResourceKey] | None]:
            docs = list(current.documents) if current else []
            remaining = [d for d in docs if document_key(d) != key]
            if len(remaining) == len(docs):
                raise NotFoundError(f"{key.ref} not found")
            return remaining, "delete", {key}

        return self._change(mutate, dry_run=dry_run, actor=actor)

    def rollback(
        self, to: int | None = None, *, dry_run: bool = False, actor: str | None = None
    ) -> ChangeResult:
        """Store an earlier version's documents as a new version (default: the previous one)."""

        def mutate(
            head: ConfigHead | None, current: ConfigRecord | None
        ) -> tuple[Sequence[RawDocument], str, set[ResourceKey] | None]:
            if head is None:
                raise NotFoundError("nothing to roll back: no config has been applied")
            target = to if to is not None else head.version - 1
            if target == head.version:
                raise NotFoundError(f"v{target} is the current version")
            if target < 1:
                raise NotFoundError("no earlier version to roll back to")
            record = next(
                (r for r in self.history() if r.version == target and r.epoch == head.epoch),
                None,
            )
            if record is None:
                raise NotFoundError(f"config version {target} is not in the history")
            self._check_base(record, f"v{target} in the history")
            return list(record.documents), f"rollback to v{target}", None

        return self._change(
            mutate, dry_run=dry_run, actor=actor, tolerate_unreadable=True, check_current=False
        )

    def change(
        self, mutate: Mutation, *, actor: str | None = None, watch: Sequence[str] = ()
    ) -> ChangeResult:
        """A custom change in one optimistic transaction: ``mutate(head, current)`` returns
        (documents, action, touched keys) and may raise to abort; it runs between the WATCH
        and the commit, so what it checked still holds when the version is stored. Redis keys
        in ``watch`` are watched too: a change to any of them retries the whole transaction
        (the rollout controller watches its lease, so a deposed leader never commits)."""
        return self._change(mutate, dry_run=False, actor=actor, watch=watch)

    def _check_base(self, record: ConfigRecord, what: str) -> None:
        """With a signer: refuse to build a signed version on ``record`` unless it verifies."""
        if self.signer is None or self.trusted is None:
            return
        if not record.signed and self.adopt_unsigned:
            return
        try:
            self.trusted.check_signature(record)
        except UntrustedConfigError as exc:
            if not record.signed:
                hint = (
                    "check it ('meshware get -o yaml') and pass --adopt-unsigned to sign on top "
                    "of it this once (switching the mesh to signed config)"
                )
            else:
                hint = (
                    "it may have been edited straight in Redis: restore a verified version with "
                    "'meshware rollback --to N' (see 'meshware history'), or, after a key "
                    "rotation, trust the key that signed it (--trusted-keys / "
                    "MESHWARE_TRUSTED_KEYS)"
                )
            raise SigningError(
                f"refusing to sign a change on top of {what}: {exc}; nothing was stored. {hint}"
            ) from None

    def _check_current(self, current: ConfigRecord, newest: ConfigRecord | None) -> None:
        self._check_base(current, f"the current config v{current.version}")
        if self.signer is None or newest is None:
            return
        if (newest.epoch, newest.version, newest.signature) != (
            current.epoch,
            current.version,
            current.signature,
        ):
            raise SigningError(
                f"refusing to sign a change on top of the current config v{current.version}: it "
                f"is not the newest stored version (the history starts with v{newest.version}), "
                "so it was written into Redis by hand (an old version copied back?); nothing was "
                f"stored. Restore the version you want with 'meshware rollback --to N'"
            )

    def _change(
        self,
        mutate: Mutation,
        *,
        dry_run: bool,
        actor: str | None,
        origins: Mapping[ResourceKey, Document] | None = None,
        tolerate_unreadable: bool = False,
        check_current: bool = True,
        watch: Sequence[str] = (),
    ) -> ChangeResult:
        for _ in range(_MAX_ATTEMPTS):
            with translate_errors(self.url), self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.keys.config, *watch)  # type: ignore[no-untyped-call]
                    head = self.head()
                    try:
                        current = self.current()
                    except ControlPlaneError as exc:
                        if not tolerate_unreadable:
                            raise ControlPlaneError(
                                f"{exc}; restore a good version with 'meshware rollback'"
                            ) from exc
                        current = None
                    newest = self.newest_in_history()
                    if check_current and current is not None:
                        self._check_current(current, newest)
                    documents, action, touched = mutate(head, current)
                    documents = sort_documents(documents)
                    config = self._validate(documents, current, origins or {})
                    before = current.documents if current else ()
                    changes = diff_documents(before, documents, touched=touched)
                    if dry_run or not any(c.action != "unchanged" for c in changes):
                        pipe.unwatch()
                        return ChangeResult(changes, None, current, config)
                    record = ConfigRecord(
                        epoch=head.epoch if head else new_epoch(),
                        version=_next_version(head, newest),
                        documents=documents,
                        digest=digest_documents(documents),
                        created_at=time.time(),
                        action=action,
                        actor=actor or default_actor(),
                        summary=_summary(changes),
                        changes=tuple(
                            (c.action, c.key.ref) for c in changes if c.action != "unchanged"
                        ),
                    )
                    if self.signer is not None:
                        record = self.signer.sign_record(record, self.keys.mesh)
                    pipe.multi()
                    pipe.delete(self.keys.config)
                    pipe.hset(self.keys.config, mapping=for_hset(record.to_hash()))
                    if head is None:
                        # A new epoch: history from an older epoch cannot be rolled back to.
                        pipe.delete(self.keys.history)
                    pipe.lpush(self.keys.history, record.to_json())
                    pipe.ltrim(self.keys.history, 0, HISTORY_LIMIT - 1)
                    pipe.publish(self.keys.events, _event(record))
                    pipe.execute()
                    return ChangeResult(changes, record, current, config)
                except redis.WatchError:
                    continue
        raise ApplyConflictError(
            f"the config kept changing under us; gave up after {_MAX_ATTEMPTS} attempts"
        )

    @staticmethod
    def _validate(
        documents: Sequence[RawDocument],
        current: ConfigRecord | None,
        origins: Mapping[ResourceKey, Document],
    ) -> MeshConfig:
        stored_as = f"redis (v{current.version})" if current else "redis"
        docs: list[Document] = []
        for i, body in enumerate(documents, start=1):
            origin = origins.get(document_key(body))
            if origin is not None:
                docs.append(Document(body, origin.source, origin.index))
            else:
                docs.append(Document(body, stored_as, i))
        return parse_documents(docs)


def _next_version(head: ConfigHead | None, newest: ConfigRecord | None) -> int:
    """One above the current version and above the newest history entry of the same epoch.

    They agree unless the current hash was overwritten by hand (say with an old version): the
    next version must still be newer than anything instances may hold, or they would refuse it
    as a replay.
    """
    if head is None:
        return 1
    stored = newest.version if newest is not None and newest.epoch == head.epoch else 0
    return max(head.version, stored) + 1


EVENT_INLINE_LIMIT = 64 * 1024


def _event(record: ConfigRecord) -> str:
    """The change event: the whole record when small (saves every instance a fetch)."""
    full = record.to_hash()
    if len(full["documents"]) <= EVENT_INLINE_LIMIT:
        return canonical_json(full)
    return canonical_json(
        {"epoch": record.epoch, "version": record.version, "digest": record.digest}
    )


def check_documents(documents: Sequence[Document]) -> None:
    """Validate documents on their own (each one, and no duplicates among them).

    Run before merging, so problems in the files are reported against the files even when
    the stored config cannot be read; whole-mesh checks follow on the merged result.
    """
    problems: list[Problem] = []
    seen: dict[ResourceKey, Document] = {}
    for document in documents:
        try:
            resource = parse_document(document)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        first = seen.setdefault(resource.key, document)
        if first is not document:
            problems.append(
                Problem(
                    f"duplicate resource: {resource.ref} is also defined in {first.source} (document {first.index})",
                    path="metadata.name",
                    resource=resource.ref,
                    source=document.source,
                    document=document.index,
                )
            )
    if problems:
        raise ConfigError(problems)
