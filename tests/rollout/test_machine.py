"""The rollout state machine, exactly: plain values in, decisions out, no I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshware.config.model.rollout import (
    Analysis,
    AnalysisStep,
    MetricCheck,
    MirrorPhase,
    PauseStep,
    RolloutSpec,
    SetWeightStep,
    Step,
    ThresholdRange,
    Webhook,
)
from meshware.rollout.machine import (
    CallHooks,
    Machine,
    RunChecks,
    Transition,
    Wait,
    WriteTraffic,
)
from meshware.rollout.plan import build_plan
from meshware.rollout.state import CheckResult, Control, HookResult, MetricResult, RolloutState
from meshware.rollout.traffic import Marker, Traffic

SUCCESS = MetricCheck("request-success-rate", ThresholdRange(min=99.0))
ANALYSIS = Analysis(interval=10.0, threshold=2, metrics=(SUCCESS,))


def machine(
    steps: tuple[Step, ...],
    analysis: Analysis = ANALYSIS,
    mirror: MirrorPhase | None = None,
) -> Machine:
    spec = RolloutSpec("reviews", "v1", "v2", steps, analysis, mirror)
    return Machine("reviews", "v2", build_plan(spec), analysis)


def check(passed: bool, at: float = 0.0) -> CheckResult:
    metric = MetricResult(
        "request-success-rate",
        passed,
        99.9 if passed else 80.0,
        100.0,
        ">= 99%",
        "" if passed else "request-success-rate 80% is below the minimum 99%",
    )
    return CheckResult(
        at=at,
        kind="analysis",
        passed=passed,
        failing="" if passed else "request-success-rate",
        reason=metric.reason,
        metrics=(metric,),
    )


@dataclass
class Run:
    """Carries decisions out the way the controller does, with scripted outcomes."""

    machine: Machine
    state: RolloutState
    control: Control = field(default_factory=Control)
    checks: Callable[[float], bool] = lambda now: True
    hooks: Callable[[str], bool] = lambda kind: True
    writes: list[WriteTraffic] = field(default_factory=list)
    checked_at: list[float] = field(default_factory=list)
    hook_calls: list[str] = field(default_factory=list)
    version: int = 1
    now: float = 0.0

    def until(self, end: float, step: float = 1.0) -> RolloutState:
        """Let time pass second by second up to ``end``, acting at each tick."""
        while self.now + step <= end:
            self.at(self.now + step)
        return self.at(end)

    def at(self, now: float) -> RolloutState:
        """Act until the machine waits at time ``now``."""
        self.now = now
        for _ in range(50):
            decision = self.machine.decide(self.state, self.control, now)
            if isinstance(decision, Wait):
                return self.state
            if isinstance(decision, Transition):
                self.state = decision.state
            elif isinstance(decision, RunChecks):
                self.checked_at.append(now)
                result = check(self.checks(now), now)
                self.state = self.machine.on_check(self.state, result, now).state
            elif isinstance(decision, CallHooks):
                self.hook_calls.append(decision.kind)
                ok = self.hooks(decision.kind)
                results = (HookResult("hook", decision.kind, ok, 200 if ok else 500),)
                self.state = self.machine.on_hooks(self.state, decision.kind, results, now).state
            elif isinstance(decision, WriteTraffic):
                self.writes.append(decision)
                self.version += 1
                self.state = self.machine.on_written(self.state, decision, self.version, now).state
        raise AssertionError("the machine never waited")


def start(m: Machine, now: float = 0.0, control: Control | None = None) -> Run:
    control = control or Control()
    initial = m.initial("default", "rev1", now, control)
    return Run(m, initial.state, control)


def test_a_healthy_rollout_walks_every_step_then_promotes() -> None:
    run = start(machine((SetWeightStep(10), PauseStep(30.0), SetWeightStep(50), PauseStep(None))))
    state = run.at(0.0)
    assert [w.traffic for w in run.writes] == [Traffic(10)]
    assert run.writes[0].action == "rollout reviews: setWeight 10 (step 1/4)"
    assert (state.stage, state.weight, state.status) == (1, 10, "Progressing")
    assert run.at(9.9).stage == 1  # pausing
    run.at(10.0)  # first check, interval after the canary got traffic
    assert run.checked_at == [10.0]
    state = run.until(30.0)
    assert state.stage == 3 and state.weight == 50
    assert [w.traffic.weight for w in run.writes] == [10, 50]
    assert state.status == "Paused"
    assert state.message == "waiting for 'meshware rollout promote reviews'"
    assert run.until(500.0).status == "Paused"  # indefinitely; checks keep running
    assert run.checked_at == [10.0 * i for i in range(1, 51)]
    run.control = Control(promote=1)
    state = run.at(501.0)
    assert state.status == "Succeeded"
    assert run.writes[-1].traffic == Traffic(100, promoted=True)
    assert run.writes[-1].action == "rollout reviews: promote v2 to 100%"
    assert state.weight == 100 and state.finished_at == 501.0 and state.post_rollout_done
    assert state.config_version == run.version


def test_checks_run_every_interval_and_the_threshold_rolls_back() -> None:
    run = start(machine((SetWeightStep(20), PauseStep(None))))
    run.checks = lambda now: now < 25.0
    run.at(0.0)
    for now in (10.0, 20.0):
        assert run.at(now).status == "Paused"
    state = run.at(30.0)
    assert state.failed_checks == 1 and state.status == "Paused"
    assert state.failing_metric == "request-success-rate"
    assert run.at(35.0).failed_checks == 1  # the next check is due at 40
    state = run.at(40.0)
    assert run.checked_at == [10.0, 20.0, 30.0, 40.0]
    assert state.status == "Failed"
    rollback = run.writes[-1]
    assert rollback.traffic == Traffic(0) and rollback.stage_key == "rollback"
    assert rollback.outcome == "Failed"
    assert state.message.startswith("request-success-rate failed 2 checks (threshold 2)")
    assert "80% is below the minimum 99%" in state.message
    assert state.weight == 0


def test_an_analysis_step_waits_for_consecutive_passing_checks() -> None:
    outcomes = iter([True, False, True, True])
    analysis = Analysis(interval=10.0, threshold=5, metrics=(SUCCESS,))
    run = start(
        machine((SetWeightStep(10), AnalysisStep(2), SetWeightStep(30), PauseStep(None)), analysis)
    )
    run.checks = lambda now: next(outcomes)
    run.at(0.0)
    assert run.until(20.0).stage == 1  # passed, failed: the count restarts
    assert run.until(30.0).passed_in_stage == 1
    state = run.until(40.0)
    assert state.stage == 3 and state.weight == 30
    assert state.failed_checks == 1


def test_operator_pause_freezes_steps_but_not_analysis() -> None:
    run = start(machine((SetWeightStep(10), PauseStep(30.0), SetWeightStep(50), PauseStep(None))))
    run.at(0.0)
    run.control = Control(paused=True)
    state = run.at(5.0)
    assert state.status == "Paused" and state.paused_by_user
    assert run.until(100.0).stage == 1  # the timed pause does not end while paused
    assert len(run.checked_at) == 10  # analysis kept running
    run.control = Control(paused=False)
    state = run.at(101.0)
    assert state.status == "Progressing"
    assert state.stage_started_at == pytest.approx(96.0)  # 96 s of pause did not count
    assert run.until(125.0).stage == 1
    assert run.until(126.0).weight == 50


def test_abort_rolls_back_and_is_not_replayed_on_a_new_run() -> None:
    run = start(machine((SetWeightStep(10), PauseStep(None))))
    run.at(0.0)
    run.control = Control(abort=1)
    state = run.at(3.0)
    assert state.status == "Aborted"
    assert run.writes[-1].outcome == "Aborted" and run.writes[-1].traffic == Traffic(0)
    fresh = start(
        machine((SetWeightStep(10), PauseStep(None))), control=Control(abort=1, promote=3)
    )
    assert fresh.state.abort_seen == 1 and fresh.state.promote_seen == 3
    resumed = fresh.at(0.0)
    assert (resumed.status, resumed.weight) == ("Paused", 10)  # not aborted, not promoted


def test_abort_before_any_write_writes_nothing() -> None:
    hooks = Analysis(webhooks=(Webhook("gate", "pre-rollout", "http://gate/"),))
    run = start(machine((SetWeightStep(10),), hooks))
    run.hooks = lambda kind: False
    run.at(0.0)
    run.control = Control(abort=1)
    assert run.at(1.0).status == "Aborted"
    assert run.writes == []


def test_promote_full_skips_to_the_promotion() -> None:
    run = start(machine((SetWeightStep(10), PauseStep(None), SetWeightStep(50))))
    run.at(0.0)
    run.control = Control(promote_full=1)
    assert run.at(1.0).status == "Succeeded"
    assert [w.traffic for w in run.writes] == [Traffic(10), Traffic(100, promoted=True)]


def test_webhooks_gate_the_start_and_the_promotion() -> None:
    hooks = (
        Webhook("smoke", "pre-rollout", "http://tests/smoke"),
        Webhook("approve", "confirm-promotion", "http://approve/"),
        Webhook("notify", "post-rollout", "http://notify/"),
    )
    analysis = Analysis(interval=10.0, threshold=3, webhooks=hooks)
    run = start(machine((SetWeightStep(50),), analysis))
    answers = iter([False, True, False, True, True])
    run.hooks = lambda kind: next(answers)
    state = run.at(0.0)
    assert run.hook_calls == ["pre-rollout"] and run.writes == []
    assert state.failed_checks == 1 and state.failing_metric == "webhook hook"
    assert run.at(9.0).failed_checks == 1  # retried after an interval
    state = run.at(10.0)
    assert [w.traffic.weight for w in run.writes] == [50]
    assert run.hook_calls == ["pre-rollout", "pre-rollout", "confirm-promotion"]
    assert state.failed_checks == 2 and state.status == "Progressing"
    state = run.at(20.0)
    assert state.status == "Succeeded"
    assert run.hook_calls[-2:] == ["confirm-promotion", "post-rollout"]
    assert state.post_rollout_done


def test_failing_webhooks_reach_the_threshold() -> None:
    hooks = Analysis(
        interval=5.0, threshold=2, webhooks=(Webhook("gate", "pre-rollout", "http://g/"),)
    )
    run = start(machine((SetWeightStep(10),), hooks))
    run.hooks = lambda kind: False
    run.at(0.0)
    state = run.at(5.0)
    assert state.status == "Failed"
    assert state.failing_metric == "webhook hook"
    assert run.writes == []  # nothing had reached the config


def test_mirror_phase_comes_first_and_its_copies_are_analysed() -> None:
    run = start(machine((SetWeightStep(10), PauseStep(None)), mirror=MirrorPhase(20.0, 50.0)))
    state = run.at(0.0)
    assert run.writes[0].traffic == Traffic(0, mirror=50.0)
    assert run.writes[0].action == "rollout reviews: mirror 50% for 20s"
    assert state.mirror == 50.0 and state.weight == 0 and state.traffic_since == 0.0
    run.at(10.0)
    assert run.checked_at == [10.0]
    state = run.until(20.0)
    assert run.writes[-1].traffic == Traffic(10)
    assert state.mirror == 0.0 and state.weight == 10


def test_a_stage_written_by_a_dead_leader_is_recorded_not_repeated() -> None:
    m = machine((SetWeightStep(10), PauseStep(30.0), SetWeightStep(50), PauseStep(None)))
    run = start(m)
    run.at(0.0)
    stale = run.until(29.0)
    while not isinstance(write := m.decide(stale, Control(), 30.0), WriteTraffic):
        if isinstance(write, RunChecks):
            stale = m.on_check(stale, check(True, 30.0), 30.0).state
        else:
            assert isinstance(write, Transition)
            stale = write.state
    assert write.traffic == Traffic(50)
    # The write reached the config (its marker says so), then the controller died before
    # saving the state: the state still says stage 2 is not applied.
    marker = Marker("reviews", "rev1.0", write.stage_key, fence=1, at=30.0, weight=50)
    recovered = m.reconcile(stale, marker, 31.0)
    assert recovered is not None
    assert recovered.state.applied_stage == 2 and recovered.state.weight == 50
    assert recovered.state.stage == 3
    assert "recovered from the config" in recovered.events[0].message
    assert m.reconcile(recovered.state, marker, 32.0) is None  # once
    assert not isinstance(m.decide(recovered.state, Control(), 32.0), WriteTraffic)
    assert m.reconcile(stale, Marker("reviews", "rev0.0", "2", 1, 30.0), 31.0) is None
    assert m.reconcile(stale, Marker("other", "rev1.0", "2", 1, 30.0), 31.0) is None
    rollback = Marker("reviews", "rev1.0", "rollback", 1, 30.0, 0, "Aborted", "by hand")
    rolled = m.reconcile(stale, rollback, 31.0)
    assert rolled is not None and rolled.state.status == "Aborted"
    # A retried run (same spec) is a new run: the old run's rollback is not its own.
    assert m.reconcile(stale.evolve(retry_seen=1), rollback, 31.0) is None


def test_state_survives_json() -> None:
    run = start(machine((SetWeightStep(10), PauseStep(None))))
    run.checks = lambda now: False
    run.at(0.0)
    state = run.at(10.0)
    assert state.last_check is not None
    assert RolloutState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match="malformed rollout state"):
        RolloutState.from_json("[1, 2]")
