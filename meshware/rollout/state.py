"""What the controller remembers about a rollout, as stored in Redis (JSON).

:class:`RolloutState` is one immutable value per rollout revision: where in the plan it is,
since when, the canary weight in the config, the analysis tally and the last check. The
controller replaces it whole on every change (a fenced write, see
:mod:`meshware.rollout.storage`); readers (the CLI) never see half an update.

:class:`Control` is the operator's side: ``pause``/``resume`` set a flag, ``promote``,
``abort`` and ``retry`` bump counters. The controller compares the counters with the ones it
has already honoured (``*_seen`` in the state), so a command is acted on exactly once even
when leaders change in between.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Status = Literal["Progressing", "Paused", "Succeeded", "Failed", "Aborted"]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed", "Aborted"})


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric of one check: the canary's value against its bounds, stable's beside it."""

    name: str
    passed: bool
    canary: float | None
    stable: float | None
    threshold: str
    reason: str = ""
    canary_requests: int = 0
    stable_requests: int = 0
    no_data: bool = False
    """Failed because the canary had too few requests to judge."""


@dataclass(frozen=True, slots=True)
class HookResult:
    """One webhook call: ``ok`` for a 2xx answer within the timeout."""

    name: str
    type: str
    ok: bool
    status: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One analysis check (metrics) or one round of webhooks; ``failing`` names the first
    metric or webhook that failed ("" when passed)."""

    at: float
    kind: Literal["analysis", "webhook"]
    passed: bool
    failing: str = ""
    reason: str = ""
    metrics: tuple[MetricResult, ...] = ()
    hooks: tuple[HookResult, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            at=float(data["at"]),
            kind=data.get("kind", "analysis"),
            passed=bool(data["passed"]),
            failing=str(data.get("failing", "")),
            reason=str(data.get("reason", "")),
            metrics=tuple(MetricResult(**m) for m in data.get("metrics", ())),
            hooks=tuple(HookResult(**h) for h in data.get("hooks", ())),
        )


@dataclass(frozen=True, slots=True)
class RolloutState:
    """One run of one rollout revision (see the module docstring)."""

    name: str
    namespace: str
    revision: str
    """Digest of the Rollout's spec: a changed spec starts a new run."""
    started_at: float
    status: Status = "Progressing"
    stage: int = 0
    """Position in the plan (:mod:`meshware.rollout.plan`) being carried out."""
    stage_started_at: float = 0.0
    applied_stage: int = -1
    """The last writing stage whose config version is stored (-1: none yet)."""
    weight: int = 0
    """Canary weight in the config now."""
    mirror: float = 0.0
    """Mirror percentage in the config now (0: not mirroring)."""
    traffic_since: float | None = None
    """When the canary first got traffic (weight or mirror); analysis starts then."""
    failed_checks: int = 0
    passed_in_stage: int = 0
    """Consecutive passing checks since the current stage began (for analysis steps)."""
    last_check_at: float = 0.0
    next_hook_at: float = 0.0
    failing_metric: str = ""
    message: str = ""
    paused_by_user: bool = False
    paused_at: float = 0.0
    promote_seen: int = 0
    promote_full_seen: int = 0
    abort_seen: int = 0
    retry_seen: int = 0
    skip_stage: bool = False
    """A ``promote`` arrived: end the current pause or analysis stage now."""
    promote_full: bool = False
    """A ``promote --full`` arrived: skip to the promotion."""
    config_version: int = 0
    """The last config version this rollout wrote."""
    finished_at: float = 0.0
    post_rollout_done: bool = False
    leader: str = ""
    """The controller that last changed this state."""
    last_check: CheckResult | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def run(self) -> str:
        """This run's id: the revision, and how many ``retry`` commands preceded it."""
        return f"{self.revision}.{self.retry_seen}"

    def evolve(self, **changes: Any) -> RolloutState:
        return replace(self, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        """Decode a stored state; ``ValueError`` if it is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in data.items() if k in known}
            check = values.pop("last_check", None)
            return cls(
                **values,
                last_check=CheckResult.from_json(check) if isinstance(check, dict) else None,
            )
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed rollout state: {exc}") from None


@dataclass(frozen=True, slots=True)
class Control:
    """The operator's commands for one rollout (see the module docstring)."""

    paused: bool = False
    promote: int = 0
    promote_full: int = 0
    abort: int = 0
    retry: int = 0

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Control:
        def number(key: str) -> int:
            try:
                return int(data.get(key) or 0)
            except ValueError:
                return 0

        return cls(
            paused=data.get("paused") == "1",
            promote=number("promote"),
            promote_full=number("promote_full"),
            abort=number("abort"),
            retry=number("retry"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a rollout's history: a transition, a config write, a check."""

    at: float
    kind: str
    """``started``, ``stage``, ``write``, ``check``, ``webhook``, ``status``, ``command``,
    ``recovered``, ``leader``."""
    message: str
    revision: str = ""
    stage: int = -1
    weight: int | None = None
    config_version: int = 0
    leader: str = ""
    check: CheckResult | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Event:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in data.items() if k in known}
            check = values.pop("check", None)
            return cls(
                **values, check=CheckResult.from_json(check) if isinstance(check, dict) else None
            )
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed rollout event: {exc}") from None
