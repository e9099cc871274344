"""A Rollout's spec flattened into the stages the controller walks, in order.

The user writes ``steps``; the controller also needs the stages around them: calling the
pre-rollout webhooks, the mirror phase, the confirm-promotion webhooks and the promotion
itself. :func:`build_plan` puts them in one list, so the state is a single position in it,
and "which stage am I in" never depends on anything but that position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshware.config.model.rollout import (
    AnalysisStep,
    PauseStep,
    RolloutSpec,
    SetWeightStep,
)

StageKind = Literal[
    "pre-rollout", "mirror", "set-weight", "pause", "analysis", "confirm-promotion", "promote"
]

WRITING_STAGES: frozenset[str] = frozenset({"mirror", "set-weight", "promote"})
"""Stages that change the VirtualService: each is one config version."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One position of the plan. ``step`` is the index into ``spec.steps`` (None for the
    stages the controller adds); ``weight`` is the canary weight once this stage is done."""

    kind: StageKind
    position: int
    step: int | None = None
    weight: int = 0
    duration: float | None = None
    checks: int = 0
    mirror: float = 0.0

    @property
    def writes(self) -> bool:
        return self.kind in WRITING_STAGES

    def describe(self) -> str:
        """``setWeight 50``, ``pause 30s``, ``pause (until promoted)``, ... for humans."""
        if self.kind == "set-weight":
            return f"setWeight {self.weight}"
        if self.kind == "pause":
            return (
                "pause (until promoted)"
                if self.duration is None
                else f"pause {_secs(self.duration)}"
            )
        if self.kind == "analysis":
            return f"analysis ({self.checks} passing check{'s' if self.checks != 1 else ''})"
        if self.kind == "mirror":
            return f"mirror {self.mirror:g}% for {_secs(self.duration or 0.0)}"
        if self.kind == "promote":
            return "promote"
        return f"{self.kind} webhooks"


def _secs(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Plan:
    """The stages of one rollout revision, ending with ``promote``."""

    stages: tuple[Stage, ...]

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, position: int) -> Stage:
        return self.stages[position]

    @property
    def promote_position(self) -> int:
        return len(self.stages) - 1

    def first(self, kind: StageKind) -> int | None:
        return next((s.position for s in self.stages if s.kind == kind), None)

    def weight_at(self, position: int) -> int:
        """The canary weight in force while at ``position`` (before it is done)."""
        weight = 0
        for stage in self.stages[:position]:
            if stage.kind == "set-weight":
                weight = stage.weight
        return weight

    def step_count(self) -> int:
        return sum(1 for s in self.stages if s.step is not None)


def build_plan(spec: RolloutSpec) -> Plan:
    stages: list[Stage] = []

    def add(
        kind: StageKind,
        *,
        step: int | None = None,
        weight: int = 0,
        duration: float | None = None,
        checks: int = 0,
        mirror: float = 0.0,
    ) -> None:
        stages.append(Stage(kind, len(stages), step, weight, duration, checks, mirror))

    if spec.analysis.hooks("pre-rollout"):
        add("pre-rollout")
    if spec.mirror is not None:
        add("mirror", duration=spec.mirror.duration, mirror=spec.mirror.percentage)
    weight = 0
    for index, step in enumerate(spec.steps):
        if isinstance(step, SetWeightStep):
            weight = step.weight
            add("set-weight", step=index, weight=weight)
        elif isinstance(step, PauseStep):
            add("pause", step=index, weight=weight, duration=step.duration)
        elif isinstance(step, AnalysisStep):
            add("analysis", step=index, weight=weight, checks=step.checks)
    if spec.analysis.hooks("confirm-promotion"):
        add("confirm-promotion", weight=weight)
    add("promote", weight=100)
    return Plan(tuple(stages))
