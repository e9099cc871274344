"""Must-show 3: A/B mode and the mirror phase, with Bookinfo under load.

A/B: only users matching ``spec.match`` (here ``end-user: tester-*``) reach the canary, until
``meshware rollout promote``; then everyone does. Mirror: before any user reaches the canary,
copies of the idempotent requests go to it; every answer still comes from stable, even though
this canary (reviews v3) fails 20 % of what it gets, and the analysis of the shadow traffic
rolls it back before a single user saw it.
"""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from click.testing import CliRunner

from meshware.cli.main import cli
from meshware.rollout.controller import revision_of
from tests.helpers import wait_until
from tests.rollout.conftest import REVIEWS_V1, Controllers, Load, RolloutMesh, SyncWatcher

pytestmark = pytest.mark.timeout(180)

AB_SPEC = """
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata: {name: reviews}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  match:
  - headers:
      end-user: {prefix: tester-}
  steps:
  - setWeight: 100
  - pause: {}
  analysis:
    interval: 2s
    threshold: 3
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 95}
"""

MIRROR_SPEC = """
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata: {name: reviews}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v3
  mirror: {duration: 60s, percentage: 100}
  steps:
  - setWeight: 50
  - pause: {}
  analysis:
    interval: 2s
    threshold: 2
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 95}
"""


def cli_json(redis_url: str, *args: str) -> object:
    result = CliRunner().invoke(cli, ["--redis-url", redis_url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ab_mode_only_matching_users_reach_the_canary_until_promotion(
    bookinfo: RolloutMesh, controllers: Controllers
) -> None:
    start = bookinfo.apply(REVIEWS_V1, AB_SPEC)
    rev = revision_of(yaml.safe_load(AB_SPEC))
    testers = [f"tester-{i}" for i in range(10)]
    others = [f"user-{i}" for i in range(20)]
    with (
        SyncWatcher(bookinfo.redis_url) as sync,
        Load(bookinfo.productpage, testers + others) as load,
    ):
        controllers.start("controller-a")
        paused = bookinfo.wait_state(
            lambda s: s.revision == rev and s.status == "Paused", timeout=30
        )
        assert paused.weight == 100
        ab_version = paused.config_version
        assert wait_until(lambda: ab_version in sync.synced or ab_version in sync.late, 5)
        ab_record = next(r for r in bookinfo.store.history() if r.version == ab_version)
        settled = ab_record.created_at + 1.0
        assert wait_until(lambda: len(load.since(settled)) >= 80, timeout=30)

        status = cli_json(bookinfo.redis_url, "rollout", "status", "reviews", "-o", "json")
        assert isinstance(status, dict)
        assert status["status"] == "Paused" and status["weight"] == 100
        assert status["message"] == "waiting for 'meshware rollout promote reviews'"

        cli_json(bookinfo.redis_url, "rollout", "promote", "reviews", "-o", "json")
        done = bookinfo.wait_state(lambda s: s.revision == rev and s.terminal, timeout=30)
        assert done.status == "Succeeded"
        assert wait_until(lambda: len(load.since(done.finished_at + 1.0)) >= 60, timeout=30)
        assert wait_until(lambda: not sync.pending, timeout=5)

    promoted = next(r for r in bookinfo.store.history() if r.version == done.config_version)
    before = load.since(0, promoted.created_at)
    assert {a.served_by for a in before if a.user in others} == {"reviews-v1"}
    assert {a.served_by for a in load.since(settled, promoted.created_at) if a.user in testers} == {
        "reviews-v2"
    }
    after = load.since(done.finished_at + 1.0)
    assert {a.served_by for a in after} == {"reviews-v2"}
    assert {a.user for a in after} == set(testers + others)
    actions = [action for _, action in bookinfo.reviews_actions(start)]
    assert actions == [
        "rollout reviews: setWeight 100 (step 1/2)",
        "rollout reviews: promote v2 to 100%",
    ]
    assert not sync.late


def test_mirror_phase_shadows_the_canary_without_affecting_answers(
    bookinfo: RolloutMesh, controllers: Controllers
) -> None:
    start = bookinfo.apply(REVIEWS_V1, MIRROR_SPEC)
    rev = revision_of(yaml.safe_load(MIRROR_SPEC))
    v3_stats = f"http://127.0.0.1:{bookinfo.port_of('reviews', 'v3')}/stats"
    before = httpx.get(v3_stats).json()
    users = [f"user-{i}" for i in range(20)]
    with SyncWatcher(bookinfo.redis_url) as sync, Load(bookinfo.productpage, users) as load:
        controllers.start("controller-a")
        state = bookinfo.wait_state(lambda s: s.revision == rev and s.terminal, timeout=40)
        assert wait_until(lambda: not sync.pending, timeout=5)
    after = httpx.get(v3_stats).json()

    # The analysis of the shadow traffic alone caught the failing canary...
    assert state.status == "Failed"
    assert state.failing_metric == "request-success-rate"
    actions = [action for _, action in bookinfo.reviews_actions(start)]
    assert actions[0] == "rollout reviews: mirror 100% for 1m"
    assert len(actions) == 2 and actions[1].startswith("rollout reviews: rollback")
    # ...which got copies of the requests, and only copies...
    shadow = after["shadow"] - before["shadow"]
    assert shadow > 20
    assert after["requests"] - before["requests"] == shadow
    # ...while every user got stable's answer, none of them an error.
    answers = load.since(0)
    assert answers
    assert {a.served_by for a in answers} == {"reviews-v1"}
    assert {a.status for a in answers} == {200}
    assert not sync.late
