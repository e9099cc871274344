"""The rollout controller's errors (part of :class:`~meshware.errors.MeshwareError`'s tree)."""

from __future__ import annotations

from meshware.errors import MeshwareError


class RolloutError(MeshwareError):
    """A rollout cannot proceed as asked: unknown rollout, bad command, missing resource."""


class LeaseLostError(RolloutError):
    """This controller no longer holds the rollout lease (expired, or a newer leader wrote);
    it must stop writing at once: another controller may be driving the rollouts now."""
