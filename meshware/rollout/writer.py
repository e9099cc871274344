"""A rollout stage written to the config: one new version, through the same path as
``meshware apply``, signed when the controller has an operator key.

The write goes through :class:`~meshware.config.store.ConfigStore`'s optimistic transaction
(WATCH the current version, validate the whole resulting mesh, store it with its history
entry and change event, sign it when a ``signer`` is set). Inside that transaction, before
anything is stored, :meth:`TrafficWriter.write` checks three things:

1. **the lease**: Redis still holds this controller's token. A deposed leader stops here;
2. **the fence**: the VirtualService's marker was not written by a *newer* leader (a higher
   fence). The transaction WATCHes the config and the lease key, which closes the gap between
   the lease check and the commit: if the lease changes hands (or is renewed) in that gap,
   or a newer leader writes the config, the commit is aborted and the retry's checks fail;
3. **the journal**: the marker does not already record this stage of this run. If it
   does, the stage reached the config before (a controller died between the config write and
   its state update) and nothing is written again: no stage is ever applied twice.

The marker is part of the very version that changes the weights, so "stage N is applied" and
"stage N is recorded" are one atomic fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshware.config.model.common import ResourceKey
from meshware.config.model.rollout import Rollout
from meshware.config.parse import Document, parse_documents
from meshware.config.record import ConfigHead, ConfigRecord, RawDocument
from meshware.config.store import ConfigStore
from meshware.rollout.errors import LeaseLostError, RolloutError
from meshware.rollout.lease import Lease
from meshware.rollout.traffic import Marker, Traffic, find_virtual_service, read_marker, rewrite


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """``version`` stored (None when the journal showed the stage was already applied)."""

    version: int | None
    already_applied: bool = False


class TrafficWriter:
    """Writes rollout stages to the config store under the lease (see the module docstring)."""

    def __init__(self, store: ConfigStore, lease: Lease, *, actor: str) -> None:
        self.store = store
        self.lease = lease
        self.actor = actor

    def write(
        self,
        rollout: Rollout,
        traffic: Traffic,
        marker: Marker,
        action: str,
    ) -> WriteOutcome:
        already = False

        def mutate(
            head: ConfigHead | None, current: ConfigRecord | None
        ) -> tuple[Sequence[RawDocument], str, set[ResourceKey] | None]:
            nonlocal already
            already = False
            if not self.lease.verify():
                raise LeaseLostError(
                    f"not writing {action!r}: this controller no longer holds the rollout lease"
                )
            if current is None:
                raise RolloutError(f"{rollout.ref}: the mesh has no config to roll out in")
            documents = list(current.documents)
            config = parse_documents(
                Document(body, f"redis (v{current.version})", i)
                for i, body in enumerate(documents, start=1)
            )
            vs, document = find_virtual_service(config, documents, rollout)
            stamped = read_marker(document)
            if stamped is not None and stamped.fence > marker.fence:
                raise LeaseLostError(
                    f"not writing {action!r}: {vs.ref} was written by a newer controller "
                    f"(fence {stamped.fence} > ours, {marker.fence})"
                )
            if (
                stamped is not None
                and stamped.rollout == marker.rollout
                and stamped.run == marker.run
                and stamped.stage == marker.stage
            ):
                already = True
                return documents, action, {vs.key}
            updated = rewrite(vs, document, rollout, traffic, marker)
            replaced = [updated if body is document else body for body in documents]
            return replaced, action, {vs.key}

        # The checks above run inside ConfigStore's WATCH transaction (between its read of the
        # current version and its commit), which also watches the lease key: if the lease
        # changes hands between our check and the commit, the commit is aborted and retried,
        # and the retry's lease check fails.
        result = self.store.change(mutate, actor=self.actor, watch=(self.lease.keys.rollout_lease,))
        if already:
            return WriteOutcome(None, already_applied=True)
        return WriteOutcome(result.record.version if result.record is not None else None)
