"""Must-show 1 and 4: Bookinfo canaries driven by the controller from live mesh metrics.

A healthy reviews v2 walks every step to 100 % on its own; reviews v3, failing 20 % of its
requests, is rolled back at the threshold-th failed check with status Failed naming
request-success-rate; reviews v4, 300 ms slower, is caught by request-duration. Every weight
change is a config version in ``meshware history``, and every instance runs it within a
second of it being stored.
"""

from __future__ import annotations

import pytest
import yaml

from meshware.rollout.controller import revision_of
from meshware.rollout.traffic import read_marker
from tests.helpers import wait_until
from tests.rollout.conftest import REVIEWS_V1, Controllers, Load, RolloutMesh, SyncWatcher

pytestmark = pytest.mark.timeout(180)

USERS = [f"user-{i}" for i in range(40)]


def rollout_yaml(canary: str, steps: str, metrics: str, *, sticky: bool = False) -> str:
    return f"""
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata: {{name: reviews}}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: {canary}
  stickyCohorts: {"true" if sticky else "false"}
  steps:
{steps}
  analysis:
    interval: 2s
    threshold: 2
    metrics:
{metrics}
"""


SUCCESS = """    - name: request-success-rate
      thresholdRange: {min: 95}"""
DURATION = """    - name: request-duration
      thresholdRange: {max: 200}"""


def revision(text: str) -> str:
    return revision_of(yaml.safe_load(text))


def canary_weights(mesh: RolloutMesh) -> list[int]:
    record = mesh.store.current()
    assert record is not None
    vs = next(d for d in record.documents if d["kind"] == "VirtualService")
    return [
        entry.get("weight", 100)
        for route in vs["spec"]["http"]
        for entry in route["route"]
        if entry["destination"]["subset"] not in ("v1",)
    ]


def test_healthy_canary_walks_every_step_to_promotion(
    bookinfo: RolloutMesh, controllers: Controllers
) -> None:
    spec = rollout_yaml(
        "v2",
        """  - setWeight: 20
  - pause: {duration: 2s}
  - setWeight: 50
  - analysis: {checks: 2}
  - setWeight: 80
  - pause: {duration: 2s}""",
        SUCCESS + "\n" + DURATION.replace("200", "1000"),
        sticky=True,
    )
    start = bookinfo.apply(REVIEWS_V1, spec)
    rev = revision(spec)
    with SyncWatcher(bookinfo.redis_url) as sync, Load(bookinfo.productpage, USERS) as load:
        controllers.start("controller-a")
        state = bookinfo.wait_state(lambda s: s.revision == rev and s.terminal, timeout=90)
        assert state.status == "Succeeded", state.message
        finished = state.finished_at
        assert wait_until(lambda: len(load.since(finished + 1.0)) >= 40, timeout=20)
        assert wait_until(lambda: not sync.pending, timeout=5)
    answers = load.since(0)

    # Every weight change, and the promotion, is one version in `meshware history`, in order.
    actions = [action for _, action in bookinfo.reviews_actions(start)]
    assert actions == [
        "rollout reviews: setWeight 20 (step 1/6)",
        "rollout reviews: setWeight 50 (step 3/6)",
        "rollout reviews: setWeight 80 (step 5/6)",
        "rollout reviews: promote v2 to 100%",
    ]
    written = [v for v, _ in bookinfo.reviews_actions(start)]
    assert not sync.late, f"instances not SYNCED within a second: {sync.late}"
    assert set(written) <= set(sync.synced)

    # Promotion: the VirtualService sends everything to v2 and every answer comes from it.
    record = bookinfo.store.current()
    assert record is not None
    vs = next(d for d in record.documents if d["kind"] == "VirtualService")
    assert [r["route"] for r in vs["spec"]["http"]] == [
        [{"destination": {"host": "reviews", "subset": "v2"}}]
    ]
    after = load.since(finished + 1.0)
    assert {a.served_by for a in after} == {"reviews-v2"}

    # Every check passed; the analysis step waited for two of them.
    events = bookinfo.events(revision=rev)
    checks = [e.check for e in events if e.kind == "check" and e.check is not None]
    assert len(checks) >= 2
    assert all(c.passed for c in checks), [c.reason for c in checks if not c.passed]
    assert state.failed_checks == 0

    # Sticky cohorts: once a user reached v2, every later answer came from v2.
    before = [a for a in answers if a.at < finished]
    assert {a.served_by for a in before} == {"reviews-v1", "reviews-v2"}
    for user in USERS:
        seen = [a.served_by for a in before if a.user == user]
        if "reviews-v2" in seen:
            first = seen.index("reviews-v2")
            assert set(seen[first:]) == {"reviews-v2"}, f"{user} went back: {seen}"


@pytest.mark.parametrize(
    ("canary", "metrics", "failing"),
    [
        pytest.param("v3", SUCCESS, "request-success-rate", id="v3-fails-20-percent"),
        pytest.param("v4", SUCCESS + "\n" + DURATION, "request-duration", id="v4-300ms-slower"),
    ],
)
def test_bad_canary_is_rolled_back_at_the_threshold(
    bookinfo: RolloutMesh, controllers: Controllers, canary: str, metrics: str, failing: str
) -> None:
    spec = rollout_yaml(canary, "  - setWeight: 50\n  - pause: {}", metrics)
    start = bookinfo.apply(REVIEWS_V1, spec)
    rev = revision(spec)
    threshold, interval = 2, 2.0
    with SyncWatcher(bookinfo.redis_url) as sync, Load(bookinfo.productpage, USERS) as load:
        controllers.start("controller-a")
        # Checks run every interval once the canary gets traffic: the rollback comes with the
        # threshold-th one; the deadline only bounds the wait.
        state = bookinfo.wait_state(
            lambda s: s.revision == rev and s.terminal, timeout=threshold * interval + 30
        )
        finished = state.finished_at
        assert wait_until(lambda: len(load.since(finished + 1.0)) >= 20, timeout=20)
        assert wait_until(lambda: not sync.pending, timeout=5)

    assert state.status == "Failed"
    assert state.failing_metric == failing
    assert failing in state.message
    assert state.failed_checks == threshold

    events = bookinfo.events(revision=rev)
    kinds = [e.kind for e in events]
    checks = [e.check for e in events if e.kind == "check" and e.check is not None]
    # No check passed: the rollback came exactly at the threshold-th check after the weight.
    assert [c.passed for c in checks] == [False] * threshold
    assert all(c.failing == failing for c in checks)
    assert kinds.index("check") > kinds.index("write")
    assert events[-1].kind == "status" and events[-1].message.startswith("Failed")

    # History: the weight, then the rollback to canary weight 0; every instance synced.
    actions = [action for _, action in bookinfo.reviews_actions(start)]
    assert actions[0] == "rollout reviews: setWeight 50 (step 1/2)"
    assert len(actions) == 2 and actions[1].startswith("rollout reviews: rollback, " + failing)
    assert canary_weights(bookinfo) == [0]
    assert not sync.late, f"instances not SYNCED within a second: {sync.late}"
    assert {v for v, _ in bookinfo.reviews_actions(start)} <= set(sync.synced)
    record = bookinfo.store.current()
    assert record is not None
    vs = next(d for d in record.documents if d["kind"] == "VirtualService")
    marker = read_marker(vs)
    assert marker is not None and marker.stage == "rollback" and marker.outcome == "Failed"

    after = load.since(finished + 1.0)
    assert {a.served_by for a in after} == {"reviews-v1"}
    during = {a.served_by for a in load.since(0, finished)}
    assert f"reviews-{canary}" in during
