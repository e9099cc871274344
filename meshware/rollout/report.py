"""What ``meshware rollout status`` shows: a rollout's spec, state and live metrics together.

:func:`collect` reads everything once (config, state, lease holder, canary and stable
measurements over the analysis interval) into plain :class:`RolloutReport` values; the CLI
renders them as Rich tables or JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from meshware.config.model.mesh import MeshConfig
from meshware.config.model.rollout import Rollout, rollout_host
from meshware.config.record import ConfigRecord, document_key
from meshware.rollout.analysis import Measurement, MetricsReader
from meshware.rollout.controller import revision_of, subset_version
from meshware.rollout.lease import LeaseHolder
from meshware.rollout.plan import Plan, build_plan
from meshware.rollout.state import RolloutState
from meshware.rollout.storage import RolloutStorage
from meshware.telemetry.aggregates import WINDOW

StepState = str  # "done" | "current" | "pending"


@dataclass(frozen=True, slots=True)
class RolloutReport:
    rollout: Rollout
    plan: Plan
    revision: str
    state: RolloutState | None
    """None until a controller picked the rollout up (or for a stale revision)."""
    canary: Measurement | None
    stable: Measurement | None
    window: float
    leader: LeaseHolder | None

    @property
    def name(self) -> str:
        return self.rollout.metadata.name

    @property
    def status(self) -> str:
        return self.state.status if self.state else "Pending"

    def step_states(self) -> list[tuple[int, str, StepState]]:
        """``(stage position, description, state)`` for every stage of the plan."""
        state = self.state
        out: list[tuple[int, str, StepState]] = []
        for stage in self.plan.stages:
            if state is None:
                mark = "pending"
            elif state.status == "Succeeded" or stage.position < state.stage:
                mark = "done"
            elif stage.position == state.stage and not state.terminal:
                mark = "current"
            else:
                mark = "pending"
            label = stage.describe()
            if stage.step is not None:
                label = f"{stage.step + 1}. {label}"
            out.append((stage.position, label, mark))
        return out

    @property
    def progress(self) -> tuple[int, int]:
        """(stages done, stages in the plan)."""
        marks = self.step_states()
        return sum(1 for _, _, m in marks if m == "done"), len(marks)

    def to_json(self) -> dict[str, Any]:
        spec = self.rollout.spec
        state = self.state
        done, total = self.progress
        return {
            "name": self.name,
            "namespace": self.rollout.metadata.namespace,
            "service": spec.service,
            "stableSubset": spec.stable_subset,
            "canarySubset": spec.canary_subset,
            "revision": self.revision,
            "status": self.status,
            "message": state.message if state else "waiting for a rollout controller",
            "weight": state.weight if state else 0,
            "mirror": state.mirror if state else 0.0,
            "stage": state.stage if state else 0,
            "progress": {"done": done, "total": total},
            "steps": [
                {"position": position, "description": label, "state": mark}
                for position, label, mark in self.step_states()
            ],
            "failedChecks": state.failed_checks if state else 0,
            "threshold": spec.analysis.threshold,
            "failingMetric": state.failing_metric if state else "",
            "lastCheck": state.last_check.to_json() if state and state.last_check else None,
            "metrics": {
                "windowSeconds": self.window,
                "canary": self.canary.to_json() if self.canary else None,
                "stable": self.stable.to_json() if self.stable else None,
            },
            "configVersion": state.config_version if state else 0,
            "startedAt": state.started_at if state else None,
            "finishedAt": (state.finished_at or None) if state else None,
            "controller": (
                {
                    "holder": self.leader.holder,
                    "fence": self.leader.fence,
                    "ttl": round(self.leader.ttl, 3),
                }
                if self.leader
                else None
            ),
            "updatedBy": state.leader if state else "",
        }


def collect(
    rollout: Rollout,
    config: MeshConfig,
    record: ConfigRecord,
    storage: RolloutStorage,
    metrics: MetricsReader | None,
    leader: LeaseHolder | None,
    *,
    now: float | None = None,
) -> RolloutReport:
    document = next(d for d in record.documents if document_key(d) == rollout.key)
    revision = revision_of(document)
    state = storage.load(rollout.metadata.namespace, rollout.metadata.name)
    if state is not None and state.revision != revision:
        state = None
    window = max(rollout.spec.analysis.interval, float(WINDOW))
    canary = stable = None
    if metrics is not None:
        host = rollout_host(rollout)
        end = time.time() if now is None else now
        canary = metrics.measure(
            host, subset_version(config, host, rollout.spec.canary_subset), window, now=end
        )
        stable = metrics.measure(
            host, subset_version(config, host, rollout.spec.stable_subset), window, now=end
        )
    return RolloutReport(
        rollout=rollout,
        plan=build_plan(rollout.spec),
        revision=revision,
        state=state,
        canary=canary,
        stable=stable,
        window=window,
        leader=leader,
    )
