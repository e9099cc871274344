"""Must-show 2: the controller driving a rollout is killed (SIGKILL) mid-way; another takes
the lease and continues from the same step, and no step is applied twice."""

from __future__ import annotations

import pytest
import yaml

from meshware.rollout.controller import revision_of
from meshware.rollout.traffic import read_marker
from tests.helpers import wait_until
from tests.rollout.conftest import REVIEWS_V1, Controllers, Load, RolloutMesh, SyncWatcher

pytestmark = pytest.mark.timeout(180)

SPEC = """
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata: {name: reviews}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  stickyCohorts: true
  steps:
  - setWeight: 10
  - pause: {duration: 2s}
  - setWeight: 20
  - pause: {duration: 2s}
  - setWeight: 40
  - pause: {duration: 2s}
  - setWeight: 60
  - pause: {duration: 2s}
  analysis:
    interval: 2s
    threshold: 3
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 95}
"""


def test_killed_controller_is_replaced_and_no_step_is_applied_twice(
    bookinfo: RolloutMesh, controllers: Controllers
) -> None:
    start = bookinfo.apply(REVIEWS_V1, SPEC)
    rev = revision_of(yaml.safe_load(SPEC))
    users = [f"user-{i}" for i in range(30)]
    with SyncWatcher(bookinfo.redis_url) as sync, Load(bookinfo.productpage, users):
        controllers.start("controller-a", lease_ttl=2.0)
        assert wait_until(lambda: bookinfo.leader() == "controller-a", timeout=20)
        controllers.start("controller-b", lease_ttl=2.0)
        # Mid-way: the second weight is in the config, its pause has begun.
        at_kill = bookinfo.wait_state(lambda s: s.revision == rev and s.applied_stage >= 2, 30)
        controllers.kill("controller-a")
        at_kill = bookinfo.state() or at_kill
        assert not at_kill.terminal
        assert wait_until(lambda: bookinfo.leader() == "controller-b", timeout=20)
        state = bookinfo.wait_state(lambda s: s.revision == rev and s.terminal, timeout=60)
        assert wait_until(lambda: not sync.pending, timeout=5)

    assert state.status == "Succeeded", state.message
    # Each step is one version in the history, in order: none was skipped or repeated.
    actions = [action for _, action in bookinfo.reviews_actions(start)]
    assert actions == [
        "rollout reviews: setWeight 10 (step 1/8)",
        "rollout reviews: setWeight 20 (step 3/8)",
        "rollout reviews: setWeight 40 (step 5/8)",
        "rollout reviews: setWeight 60 (step 7/8)",
        "rollout reviews: promote v2 to 100%",
    ]
    assert not sync.late, f"instances not SYNCED within a second: {sync.late}"

    events = bookinfo.events(revision=rev)
    by_a = [e for e in events if e.leader == "controller-a"]
    by_b = [e for e in events if e.leader == "controller-b"]
    assert by_a and by_b
    # controller-b picked up where controller-a was: nothing before that stage again.
    assert min(e.stage for e in by_b) >= at_kill.stage
    writes = [e.stage for e in events if e.kind == "write"]
    assert len(writes) == len(set(writes)) == 5
    # The last write carries controller-b's fence, above controller-a's.
    record = bookinfo.store.current()
    assert record is not None
    vs = next(d for d in record.documents if d["kind"] == "VirtualService")
    marker = read_marker(vs)
    assert marker is not None and marker.fence >= 2
    assert "took the rollout lease" in controllers.log("controller-b")
