"""The rollout state machine: what to do next, decided without I/O.

:meth:`Machine.decide` looks at the state, the operator's commands and the clock and
returns one :data:`Decision`: wait, change the state, run an analysis check, call webhooks,
or write traffic to the config. The controller carries it out and feeds the outcome back
(:meth:`on_check`, :meth:`on_hooks`, :meth:`on_written`), each returning the next state and
the history events to record. Nothing here reads Redis or a clock, so every path (promotion,
rollback on the N-th failed check, pause and resume, takeover after a crash) is tested
exactly with plain values.

Priorities, highest first: an ``abort``; a failed-check count at the threshold (rollback);
``pause``/``resume``; ``promote``; an analysis check that is due; then the current stage.

Status: ``Progressing`` while stages advance, ``Paused`` while the operator paused it or an
indefinite ``pause`` waits for ``promote``, then ``Succeeded`` (promoted), ``Failed``
(rolled back by analysis) or ``Aborted`` (rolled back by the operator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshware.config.model.rollout import Analysis, WebhookType
from meshware.rollout.plan import Plan, Stage
from meshware.rollout.state import (
    CheckResult,
    Control,
    Event,
    HookResult,
    RolloutState,
    Status,
)
from meshware.rollout.traffic import Marker, Traffic

ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until the next tick."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    """Store ``state`` (and the events) as the new state."""

    state: RolloutState
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class RunChecks:
    """Measure the canary and stable now and feed the result to :meth:`Machine.on_check`."""


@dataclass(frozen=True, slots=True)
class CallHooks:
    """Call the webhooks of ``kind`` and feed the results to :meth:`Machine.on_hooks`."""

    kind: WebhookType


@dataclass(frozen=True, slots=True)
class WriteTraffic:
    """Store ``traffic`` as a new config version stamped with stage ``stage_key`` (a plan
    position, or ``rollback``), then feed the outcome to :meth:`Machine.on_written`."""

    traffic: Traffic
    stage_key: str
    action: str
    outcome: Status | None = None
    reason: str = ""


Decision = Wait | Transition | RunChecks | CallHooks | WriteTraffic


class Machine:
    """The decisions for one rollout revision (see the module docstring)."""

    def __init__(self, name: str, canary: str, plan: Plan, analysis: Analysis) -> None:
        self.name = name
        self.canary = canary
        self.plan = plan
        self.analysis = analysis

    # -- starting ------------------------------------------------------------------------

    def initial(
        self,
        namespace: str,
        revision: str,
        now: float,
        control: Control,
        *,
        leader: str = "",
        weight: int = 0,
    ) -> Transition:
        """A new run: commands given before it started are not replayed on it."""
        state = RolloutState(
            name=self.name,
            namespace=namespace,
            revision=revision,
            started_at=now,
            stage_started_at=now,
            weight=weight,
            promote_seen=control.promote,
            promote_full_seen=control.promote_full,
            abort_seen=control.abort,
            retry_seen=control.retry,
            leader=leader,
        )
        first = self.plan[0]
        return Transition(
            state,
            (
                self._event(state, now, "started", f"revision {revision} started"),
                self._event(state, now, "stage", self._stage_text(first)),
            ),
        )

    # -- deciding ------------------------------------------------------------------------

    def decide(self, state: RolloutState, control: Control, now: float) -> Decision:
        if state.terminal:
            if state.post_rollout_done:
                return Wait("finished")
            if self.analysis.hooks("post-rollout"):
                return CallHooks("post-rollout")
            return Transition(state.evolve(post_rollout_done=True))
        if control.abort > state.abort_seen:
            return self._rollback(
                state.evolve(abort_seen=control.abort),
                "Aborted",
                "aborted by 'meshware rollout abort'",
                now,
            )
        if state.failed_checks >= self.analysis.threshold:
            return self._rollback(
                state,
                "Failed",
                f"{state.failing_metric or 'analysis'} failed {state.failed_checks} "
                f"check{'s' if state.failed_checks != 1 else ''} (threshold "
                f"{self.analysis.threshold})"
                + (
                    f": {state.last_check.reason}"
                    if state.last_check and state.last_check.reason
                    else ""
                ),
                now,
            )
        command = self._commands(state, control, now)
        if command is not None:
            return command
        stage = self.plan[state.stage]
        if self.analysing(state) and now >= self.next_check_at(state):
            return RunChecks()
        if state.paused_by_user:
            return Wait("paused by the operator")
        if state.promote_full and stage.kind not in ("confirm-promotion", "promote"):
            target = self.plan.first("confirm-promotion")
            return self._advance(
                state, now, self.plan.promote_position if target is None else target
            )
        return self._stage(state, stage, now)

    def analysing(self, state: RolloutState) -> bool:
        """Are checks running? While the canary gets traffic (weight or mirror copies)."""
        return (
            bool(self.analysis.metrics)
            and state.traffic_since is not None
            and (state.weight > 0 or state.mirror > 0)
        )

    def next_check_at(self, state: RolloutState) -> float:
        since = state.traffic_since if state.traffic_since is not None else state.started_at
        return max(state.last_check_at, since) + self.analysis.interval

    def _commands(self, state: RolloutState, control: Control, now: float) -> Decision | None:
        if control.paused and not state.paused_by_user:
            paused = state.evolve(
                paused_by_user=True,
                paused_at=now,
                status="Paused",
                message="paused by 'meshware rollout pause'",
            )
            return Transition(paused, (self._event(paused, now, "command", "paused"),))
        if not control.paused and state.paused_by_user:
            shift = max(0.0, now - state.paused_at)
            resumed = state.evolve(
                paused_by_user=False,
                paused_at=0.0,
                status="Progressing",
                message="",
                stage_started_at=state.stage_started_at + shift,
            )
            return Transition(resumed, (self._event(resumed, now, "command", "resumed"),))
        if control.promote_full > state.promote_full_seen:
            promoted = state.evolve(promote_full_seen=control.promote_full, promote_full=True)
            return Transition(
                promoted,
                (self._event(promoted, now, "command", "promote --full: skipping to promotion"),),
            )
        if control.promote > state.promote_seen:
            skipping = state.evolve(promote_seen=control.promote, skip_stage=True)
            return Transition(
                skipping,
                (self._event(skipping, now, "command", "promote: ending the current step"),),
            )
        return None

    def _stage(self, state: RolloutState, stage: Stage, now: float) -> Decision:
        elapsed = now - state.stage_started_at
        if stage.kind in ("pre-rollout", "confirm-promotion"):
            if now >= state.next_hook_at:
                return CallHooks("pre-rollout" if stage.kind == "pre-rollout" else stage.kind)
            return Wait("retrying the webhooks")
        if stage.kind == "mirror":
            if state.applied_stage < stage.position:
                return self._write(stage, Traffic(weight=state.weight, mirror=stage.mirror))
            if state.skip_stage or elapsed >= (stage.duration or 0.0):
                return self._advance(state, now)
            return Wait("mirroring")
        if stage.kind == "set-weight":
            return self._write(stage, Traffic(weight=stage.weight))
        if stage.kind == "pause":
            if state.skip_stage or (stage.duration is not None and elapsed >= stage.duration):
                return self._advance(state, now)
            if stage.duration is None and state.status != "Paused":
                waiting = state.evolve(
                    status="Paused",
                    message=f"waiting for 'meshware rollout promote {self.name}'",
                )
                return Transition(waiting)
            return Wait("pausing")
        if stage.kind == "analysis":
            if state.skip_stage or state.passed_in_stage >= stage.checks:
                return self._advance(state, now)
            return Wait("analysing")
        return self._write(stage, Traffic(weight=100, promoted=True))

    def _write(self, stage: Stage, traffic: Traffic) -> WriteTraffic:
        return WriteTraffic(traffic, str(stage.position), self._action(stage))

    def _action(self, stage: Stage) -> str:
        """The history line of a stage's config version (``meshware history``)."""
        step = f" (step {stage.step + 1}/{len(self._steps())})" if stage.step is not None else ""
        if stage.kind == "promote":
            return f"rollout {self.name}: promote {self.canary} to 100%"
        return f"rollout {self.name}: {stage.describe()}{step}"

    def _steps(self) -> Sequence[Stage]:
        return [s for s in self.plan.stages if s.step is not None]

    def _rollback(self, state: RolloutState, outcome: Status, reason: str, now: float) -> Decision:
        if state.applied_stage < 0 and state.weight == 0 and state.mirror == 0:
            # Nothing of this run reached the config: there is nothing to roll back.
            return self._finish(state, outcome, reason, now=now)
        return WriteTraffic(
            Traffic(weight=0),
            ROLLBACK,
            f"rollout {self.name}: rollback, {reason}",
            outcome=outcome,
            reason=reason,
        )

    def _finish(
        self, state: RolloutState, outcome: Status, reason: str, *, now: float
    ) -> Transition:
        finished = state.evolve(
            status=outcome, finished_at=now, message=reason, weight=0, mirror=0.0
        )
        return Transition(finished, (self._event(finished, now, "status", f"{outcome}: {reason}"),))

    def _advance(self, state: RolloutState, now: float, target: int | None = None) -> Transition:
        position = state.stage + 1 if target is None else target
        position = min(position, self.plan.promote_position)
        moved = state.evolve(
            stage=position,
            stage_started_at=now,
            passed_in_stage=0,
            skip_stage=False,
            next_hook_at=0.0,
            status="Progressing",
            message="",
        )
        return Transition(
            moved, (self._event(moved, now, "stage", self._stage_text(self.plan[position])),)
        )

    def _stage_text(self, stage: Stage) -> str:
        if stage.step is not None:
            return f"step {stage.step + 1}/{len(self._steps())}: {stage.describe()}"
        return stage.describe()

    # -- outcomes ------------------------------------------------------------------------

    def on_check(self, state: RolloutState, result: CheckResult, now: float) -> Transition:
        if result.passed:
            checked = state.evolve(
                last_check_at=now, last_check=result, passed_in_stage=state.passed_in_stage + 1
            )
            text = "check passed"
        else:
            failed = state.failed_checks + 1
            checked = state.evolve(
                last_check_at=now,
                last_check=result,
                passed_in_stage=0,
                failed_checks=failed,
                failing_metric=result.failing,
                message=f"{result.failing}: {result.reason} ({failed}/{self.analysis.threshold})",
            )
            text = f"check failed ({failed}/{self.analysis.threshold}): {result.reason}"
        return Transition(checked, (self._event(checked, now, "check", text, check=result),))

    def on_hooks(
        self,
        state: RolloutState,
        kind: WebhookType,
        results: Sequence[HookResult],
        now: float,
    ) -> Transition:
        failed = [r for r in results if not r.ok]
        result = CheckResult(
            at=now,
            kind="webhook",
            passed=not failed,
            failing=f"webhook {failed[0].name}" if failed else "",
            reason=(
                f"{kind} webhook {failed[0].name} failed: "
                + (failed[0].error or f"HTTP {failed[0].status}")
                if failed
                else ""
            ),
            hooks=tuple(results),
        )
        text = f"{kind} webhooks " + ("passed" if not failed else f"failed: {result.reason}")
        event = self._event(state, now, "webhook", text, check=result)
        if kind == "post-rollout":
            return Transition(state.evolve(post_rollout_done=True, last_check=result), (event,))
        if not failed:
            moved = self._advance(state.evolve(last_check=result), now)
            return Transition(moved.state, (event, *moved.events))
        count = state.failed_checks + 1
        retry = state.evolve(
            last_check=result,
            failed_checks=count,
            failing_metric=result.failing,
            next_hook_at=now + self.analysis.interval,
            message=f"{result.reason} ({count}/{self.analysis.threshold})",
        )
        return Transition(retry, (event,))

    def on_written(
        self,
        state: RolloutState,
        write: WriteTraffic,
        version: int | None,
        now: float,
        *,
        recovered: bool = False,
    ) -> Transition:
        """``write`` is in the config (as ``version``; None if an identical version already
        was, e.g. written by a controller that died before recording it)."""
        config_version = version if version is not None else state.config_version
        how = "recovered from the config" if recovered else f"config v{config_version}"
        if write.stage_key == ROLLBACK:
            outcome: Status = write.outcome or "Failed"
            done = self._finish(
                state.evolve(config_version=config_version), outcome, write.reason, now=now
            )
            event = self._event(
                done.state, now, "write", f"{write.action} ({how})", weight=0, version=version
            )
            return Transition(done.state, (event, *done.events))
        traffic = write.traffic
        stage = self.plan[int(write.stage_key)]
        written = state.evolve(
            applied_stage=stage.position,
            weight=traffic.weight,
            mirror=traffic.mirror,
            config_version=config_version,
            traffic_since=(
                state.traffic_since
                if state.traffic_since is not None or (traffic.weight <= 0 and traffic.mirror <= 0)
                else now
            ),
        )
        event = self._event(
            written, now, "write", f"{write.action} ({how})", weight=traffic.weight, version=version
        )
        if stage.kind == "mirror":
            return Transition(written.evolve(stage_started_at=now), (event,))
        if stage.kind == "promote":
            reason = f"promoted: 100% of traffic on {self.canary}"
            succeeded = written.evolve(
                status="Succeeded", finished_at=now, message=reason, weight=100, mirror=0.0
            )
            return Transition(
                succeeded,
                (event, self._event(succeeded, now, "status", f"Succeeded: {reason}")),
            )
        moved = self._advance(written, now)
        return Transition(moved.state, (event, *moved.events))

    def reconcile(
        self, state: RolloutState, marker: Marker | None, now: float
    ) -> Transition | None:
        """After a takeover: a write the previous leader stored but did not record."""
        if (
            marker is None
            or state.terminal
            or marker.rollout != self.name
            or marker.run != state.run
        ):
            return None
        if marker.stage == ROLLBACK:
            outcome: Status = "Aborted" if marker.outcome == "Aborted" else "Failed"
            write = WriteTraffic(Traffic(weight=0), ROLLBACK, "rollback", outcome, marker.reason)
            return self.on_written(state, write, None, now, recovered=True)
        try:
            position = int(marker.stage)
        except ValueError:
            return None
        if position != state.stage or state.applied_stage >= position:
            return None
        stage = self.plan[position] if position < len(self.plan) else None
        if stage is None or not stage.writes:
            return None
        decision = self._stage(state.evolve(applied_stage=position - 1), stage, now)
        if not isinstance(decision, WriteTraffic):
            return None
        return self.on_written(state, decision, None, now, recovered=True)

    def _event(
        self,
        state: RolloutState,
        now: float,
        kind: str,
        message: str,
        *,
        weight: int | None = None,
        version: int | None = None,
        check: CheckResult | None = None,
    ) -> Event:
        return Event(
            at=now,
            kind=kind,
            message=message,
            revision=state.revision,
            stage=state.stage,
            weight=weight,
            config_version=version or 0,
            leader=state.leader,
            check=check,
        )
