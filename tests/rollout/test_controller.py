"""The controller against a real Redis and real mesh instances (no traffic needed: these
rollouts gate on pauses and webhooks, not metrics): a crash between a config write and the
state update, the controller inside ``Mesh`` instances with leader hand-over, signed steps,
webhooks over real HTTP, and the operator commands of ``meshware rollout``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshware import ConfigError, Mesh
from meshware.config.parse import load_yaml
from meshware.config.registry import list_instances
from meshware.config.store import ConfigStore
from meshware.rollout.controller import RolloutController, build_controller, controller_for_mesh
from meshware.rollout.lease import read_holder
from meshware.rollout.machine import Transition
from meshware.rollout.state import RolloutState
from meshware.rollout.storage import RolloutStorage
from meshware.security.signing import write_key_pair
from meshware.settings import Settings
from tests.helpers import wait_until
from tests.servers import serve_asgi

BASE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""


def rollout(steps: str, analysis: str = "") -> str:
    return f"""
apiVersion: meshware.io/v1alpha1
kind: Rollout
metadata: {{name: reviews}}
spec:
  service: reviews
  stableSubset: v1
  canarySubset: v2
  steps:
{steps}
{analysis}
"""


def apply(redis_url: str, text: str, store: ConfigStore | None = None) -> None:
    own = store is None
    store = store or ConfigStore.from_url(redis_url)
    try:
        store.apply(load_yaml(text, "test.yaml"))
    finally:
        if own:
            store.close()


def state_of(redis_url: str) -> RolloutState | None:
    store = ConfigStore.from_url(redis_url)
    try:
        return RolloutStorage(store.client, store.keys).load("default", "reviews")
    finally:
        store.close()


def actions(redis_url: str) -> list[str]:
    store = ConfigStore.from_url(redis_url)
    try:
        return [r.action for r in reversed(store.history()) if r.action.startswith("rollout")]
    finally:
        store.close()


@contextmanager
def ticking(controller: RolloutController) -> Iterator[RolloutController]:
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield controller
    finally:
        stop.set()
        thread.join(timeout=10)


class Crash(BaseException):
    """The controller process dying (not an error anything should handle)."""


class CrashAfterWrite(RolloutController):
    """Dies right after its first config write, before recording it in the rollout state."""

    def _save(self, transition: Transition) -> RolloutState:
        if any(e.kind == "write" for e in transition.events):
            raise Crash
        return super()._save(transition)


def test_a_crash_between_the_config_write_and_the_state_is_recovered_not_repeated(
    redis_url: str,
) -> None:
    apply(redis_url, BASE + "---" + rollout("  - setWeight: 30\n  - setWeight: 60"))
    dying = CrashAfterWrite(redis_url, holder="dying", lease_ttl=1.0, tick=0.1)
    with pytest.raises(Crash):
        dying.tick()
    state = state_of(redis_url)
    assert state is not None and state.applied_stage == -1  # the state never heard of it
    assert actions(redis_url) == ["rollout reviews: setWeight 30 (step 1/2)"]

    successor = build_controller(redis_url, holder="successor", lease_ttl=1.0, tick=0.1)
    try:
        assert wait_until(successor.tick, timeout=5)  # after the dead one's lease expires
        state = state_of(redis_url)
        assert state is not None and state.status == "Succeeded"
    finally:
        successor.close()
        dying.client.close()
    assert actions(redis_url) == [
        "rollout reviews: setWeight 30 (step 1/2)",
        "rollout reviews: setWeight 60 (step 2/2)",
        "rollout reviews: promote v2 to 100%",
    ]
    store = ConfigStore.from_url(redis_url)
    events = RolloutStorage(store.client, store.keys).history("default", "reviews")
    store.close()
    recovered = [e for e in events if "recovered from the config" in e.message]
    assert len(recovered) == 1 and recovered[0].leader == "successor"


def _mesh(redis_url: str, tmp_path: Path, name: str, **settings: Any) -> Mesh:
    return Mesh.from_settings(
        Settings(
            service=name,
            redis_url=redis_url,
            state_dir=tmp_path / name,
            heartbeat_interval=0.2,
            instance_ttl=2.0,
            resync_interval=0.5,
            rollout_controller=True,
            rollout_lease_ttl=1.5,
            rollout_tick=0.1,
            **settings,
        ),
        instance_id=name,
    )


def test_instances_elect_one_driver_and_hand_over_when_it_stops(
    redis_url: str, tmp_path: Path
) -> None:
    apply(redis_url, BASE)
    first = _mesh(redis_url, tmp_path, "alpha").start()
    second = _mesh(redis_url, tmp_path, "beta").start()
    store = ConfigStore.from_url(redis_url)
    try:
        assert wait_until(lambda: read_holder(store.client, store.keys) is not None, timeout=5)
        holder = read_holder(store.client, store.keys)
        assert holder is not None and holder.holder in ("alpha", "beta")
        leader, standby = (first, second) if holder.holder == "alpha" else (second, first)
        apply(
            redis_url,
            rollout(
                "  - setWeight: 20\n  - pause: {duration: 1s}\n  - setWeight: 40\n  - pause: {}"
            ),
            store,
        )
        paused = wait_until(
            lambda: (s := state_of(redis_url)) is not None and s.status == "Paused", timeout=10
        )
        assert paused
        leader.stop()
        assert wait_until(
            lambda: (
                (h := read_holder(store.client, store.keys)) is not None
                and h.holder == standby.instance_id
            ),
            timeout=5,
        )
        RolloutStorage(store.client, store.keys).command("default", "reviews", "promote")
        assert wait_until(
            lambda: (s := state_of(redis_url)) is not None and s.status == "Succeeded", timeout=10
        )
        state = state_of(redis_url)
        assert state is not None and state.leader == standby.instance_id
        assert actions(redis_url) == [
            "rollout reviews: setWeight 20 (step 1/4)",
            "rollout reviews: setWeight 40 (step 3/4)",
            "rollout reviews: promote v2 to 100%",
        ]
        head = store.head()
        assert wait_until(
            lambda: all(
                s.state == "SYNCED" for s in list_instances(store.client, store.keys, head)
            ),
            timeout=5,
        )
    finally:
        first.stop()
        second.stop()
        store.close()


def test_signed_mesh_steps_are_signed_and_applied(redis_url: str, tmp_path: Path) -> None:
    operator, private, public = write_key_pair(tmp_path / "keys", "operator")
    signed = ConfigStore.from_url(redis_url, signer=operator)
    apply(redis_url, BASE, signed)
    # Signing on, no key: this instance serves but does not compete for the lease.
    assert (
        controller_for_mesh(
            redis_url,
            mesh="default",
            holder="keyless",
            signing_key=None,
            trusted_keys=(public,),
            lease_ttl=1.5,
            tick=0.1,
        )
        is None
    )
    instance = _mesh(
        redis_url, tmp_path, "driver", trusted_keys=(public,), signing_key=private
    ).start()
    try:
        apply(redis_url, rollout("  - setWeight: 50\n  - pause: {}"), signed)
        assert wait_until(
            lambda: (s := state_of(redis_url)) is not None and s.status == "Paused", timeout=10
        )
        record = signed.current()
        assert record is not None and record.key_id == operator.key_id
        assert record.action == "rollout reviews: setWeight 50 (step 1/2)"
        assert wait_until(lambda: instance.snapshot.version == record.version, timeout=5)
        assert instance.watcher.nack is None
    finally:
        instance.stop()
        signed.close()


def test_webhooks_are_called_over_http_and_gate_the_rollout(redis_url: str) -> None:
    calls: list[dict[str, Any]] = []
    answers = {"pre-rollout": [500, 200], "confirm-promotion": [200], "post-rollout": [200]}

    async def hook(request: Request) -> JSONResponse:
        body = await request.json()
        calls.append(body)
        status = answers[body["type"]].pop(0)
        return JSONResponse({"ok": status == 200}, status_code=status)

    with serve_asgi(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        analysis = f"""  analysis:
    interval: 0.5s
    threshold: 3
    webhooks:
    - {{name: smoke, type: pre-rollout, url: "{url}/hook", metadata: {{suite: quick}}}}
    - {{name: approve, type: confirm-promotion, url: "{url}/hook", timeout: 2s}}
    - {{name: notify, type: post-rollout, url: "{url}/hook"}}"""
        apply(redis_url, BASE + "---" + rollout("  - setWeight: 50", analysis))
        controller = build_controller(redis_url, holder="hooks", lease_ttl=1.5, tick=0.1)
        with ticking(controller):
            assert wait_until(
                lambda: (s := state_of(redis_url)) is not None and s.post_rollout_done,
                timeout=15,
            )
    state = state_of(redis_url)
    assert state is not None and state.status == "Succeeded"
    assert state.failed_checks == 1  # the first pre-rollout answer
    assert [c["type"] for c in calls] == [
        "pre-rollout",
        "pre-rollout",
        "confirm-promotion",
        "post-rollout",
    ]
    assert calls[0]["metadata"] == {"suite": "quick"}
    assert calls[0]["weight"] == 0 and calls[2]["weight"] == 50
    assert calls[3]["phase"] == "Succeeded"
    assert {c["canarySubset"] for c in calls} == {"v2"}


def test_an_unreachable_webhook_fails_the_rollout(redis_url: str) -> None:
    analysis = """  analysis:
    interval: 0.2s
    threshold: 2
    webhooks:
    - {name: gate, type: pre-rollout, url: "http://127.0.0.1:9/never", timeout: 0.5s}"""
    apply(redis_url, BASE + "---" + rollout("  - setWeight: 50", analysis))
    controller = build_controller(redis_url, holder="hooks", lease_ttl=1.5, tick=0.1)
    with ticking(controller):
        assert wait_until(lambda: (s := state_of(redis_url)) is not None and s.terminal, timeout=10)
    state = state_of(redis_url)
    assert state is not None and state.status == "Failed"
    assert state.failing_metric == "webhook gate"
    assert actions(redis_url) == []  # nothing reached the config


def test_operator_commands(meshctl: Callable[..., Result], redis_url: str) -> None:
    def cli(*args: str) -> Any:
        result = meshctl("rollout", *args, "-o", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    apply(
        redis_url,
        BASE
        + "---"
        + rollout("  - setWeight: 20\n  - pause: {duration: 1s}\n  - setWeight: 40\n  - pause: {}"),
    )
    assert cli("status") == [
        {**cli("status")[0], "name": "reviews", "status": "Pending", "controller": None}
    ]
    refused = meshctl("rollout", "promote", "nope")
    assert refused.exit_code == 1 and "Rollout/nope not found" in refused.output

    controller = build_controller(redis_url, holder="ops", lease_ttl=1.5, tick=0.1)
    with ticking(controller):
        assert wait_until(lambda: (s := state_of(redis_url)) is not None and s.weight == 20, 10)
        paused = cli("pause", "reviews")
        assert paused["control"]["paused"] is True and paused["controller"] == "ops"
        assert wait_until(lambda: (s := state_of(redis_url)) is not None and s.paused_by_user, 5)
        status = cli("status", "reviews")
        assert status["status"] == "Paused" and status["weight"] == 20
        assert status["message"] == "paused by 'meshware rollout pause'"
        assert [s["state"] for s in status["steps"]] == [
            "done",
            "current",
            "pending",
            "pending",
            "pending",
        ]
        assert status["metrics"]["canary"]["requests"] == 0
        cli("resume", "reviews")
        assert wait_until(
            lambda: (
                (s := state_of(redis_url)) is not None and s.status == "Paused" and s.weight == 40
            ),
            timeout=10,
        )
        cli("abort", "reviews")
        assert wait_until(
            lambda: (s := state_of(redis_url)) is not None and s.status == "Aborted", timeout=5
        )
        again = meshctl("rollout", "abort", "reviews")
        assert again.exit_code == 1 and "is Aborted; nothing to abort" in again.output
        cli("retry", "reviews")
        assert wait_until(
            lambda: (
                (s := state_of(redis_url)) is not None and s.status == "Paused" and s.weight == 40
            ),
            timeout=10,
        )
    history = cli("history", "reviews")
    kinds = [e["kind"] for e in reversed(history)]
    assert kinds.count("started") == 2
    assert any(e["message"] == "paused" for e in history)
    assert any(e["message"].startswith("Aborted") for e in history)
    assert actions(redis_url) == [
        "rollout reviews: setWeight 20 (step 1/4)",
        "rollout reviews: setWeight 40 (step 3/4)",
        "rollout reviews: rollback, aborted by 'meshware rollout abort'",
        "rollout reviews: setWeight 20 (step 1/4)",
        "rollout reviews: setWeight 40 (step 3/4)",
    ]
    table = meshctl("rollout", "status", "reviews")
    assert table.exit_code == 0, table.output
    assert "Rollout reviews" in table.output and "canary weight: 40%" in table.output


def test_the_controller_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "MESHWARE_SERVICE": "reviews",
            "MESHWARE_ROLLOUT_CONTROLLER": "1",
            "MESHWARE_SIGNING_KEY": str(tmp_path / "operator.key"),
            "MESHWARE_ROLLOUT_LEASE_TTL": "6",
            "MESHWARE_ROLLOUT_TICK": "0.5",
        }
    )
    assert settings.rollout_controller
    assert settings.signing_key == tmp_path / "operator.key"
    assert (settings.rollout_lease_ttl, settings.rollout_tick) == (6.0, 0.5)
    assert not Settings.from_env({"MESHWARE_SERVICE": "reviews"}).rollout_controller
    with pytest.raises(ConfigError, match="rollout_tick: must be at most a third"):
        Settings(service="reviews", rollout_lease_ttl=1.0, rollout_tick=0.5)
