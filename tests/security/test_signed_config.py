"""Signed config against real Redis and real started meshes: attacks on the control plane.

Someone with write access to Redis edits the current version, writes an unsigned one, or
copies an old signed version back: every instance that trusts operator keys NACKs it, keeps
serving its last good routes (checked with real requests through the mesh client to real
upstream servers), and nothing crashes. Rotation, unsigned development mode, the disk copy
and the CLI (``keys init``, ``apply --signing-key``) are covered too.
"""

from __future__ import annotations

import json
import logging
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from click.testing import Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshware import ConfigError, Mesh
from meshware.config.keys import Keys
from meshware.config.parse import load_yaml
from meshware.config.record import ConfigRecord, canonical_json, digest_documents
from meshware.config.registry import list_instances
from meshware.config.store import ConfigStore
from meshware.embedded_redis import free_port
from meshware.security.signing import (
    ConfigVerifier,
    OperatorKey,
    SigningError,
    write_key_pair,
)
from tests.helpers import wait_until
from tests.servers import serve_asgi

MeshFactory = Callable[..., Mesh]
Meshctl = Callable[..., Result]
KEYS = Keys("default")

RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def route_to(subset: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
"""


@dataclass
class Operator:
    key: OperatorKey
    private: Path
    public: Path


@pytest.fixture
def operator(tmp_path: Path) -> Operator:
    return Operator(*write_key_pair(tmp_path / "keys", "operator"))


@pytest.fixture
def signed_store(redis_url: str, operator: Operator) -> Iterator[ConfigStore]:
    store = ConfigStore.from_url(redis_url, signer=operator.key)
    yield store
    store.close()


def apply(store: ConfigStore, text: str) -> ConfigRecord:
    result = store.apply(load_yaml(text, "test.yaml"))
    assert result.record is not None
    return result.record


def admin(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def write_current(url: str, record: ConfigRecord) -> None:
    """The attacker's move: replace the current version in Redis and announce it."""
    client = admin(url)
    try:
        client.delete(KEYS.config)
        client.hset(KEYS.config, mapping=record.to_hash())
        event = {"epoch": record.epoch, "version": record.version, "digest": record.digest}
        client.publish(KEYS.events, json.dumps(event))
    finally:
        client.close()


def reroute_current(url: str, subset: str) -> ConfigRecord:
    """Edit the current version's routes in Redis (valid config, consistent digest), as v+1."""
    client = admin(url)
    try:
        current = ConfigRecord.from_hash(client.hgetall(KEYS.config))
    finally:
        client.close()
    documents = json.loads(canonical_json(list(current.documents)))
    for doc in documents:
        if doc["kind"] == "VirtualService":
            doc["spec"]["http"][0]["route"][0]["destination"]["subset"] = subset
    forged = ConfigRecord.from_hash(
        {
            **current.to_hash(),
            "version": str(current.version + 1),
            "documents": canonical_json(documents),
            "digest": digest_documents(documents),
        }
    )
    write_current(url, forged)
    return forged


def nacked(meshes: list[Mesh], version: int) -> Callable[[], bool]:
    return lambda: all(
        m.watcher.nack is not None and m.watcher.nack.version == version for m in meshes
    )


def at(meshes: list[Mesh], version: int) -> Callable[[], bool]:
    return lambda: all(m.snapshot.version == version and m.watcher.nack is None for m in meshes)


@pytest.fixture
def reviews(make_mesh: MeshFactory, operator: Operator) -> Iterator[None]:
    """reviews v1 and v2: real HTTP servers registered in the mesh, answering their version."""
    with ExitStack() as stack:
        for version in ("v1", "v2"):
            port = free_port()
            mesh = make_mesh(
                "reviews", version, address=f"127.0.0.1:{port}", trusted_keys=operator.public
            )

            async def answer(request: Request, version: str = version) -> PlainTextResponse:
                return PlainTextResponse(version)

            app = Starlette(routes=[Route("/{path:path}", answer)], lifespan=mesh.lifespan)
            stack.enter_context(serve_asgi(app, port=port))
        yield


@pytest.fixture
def caller(make_mesh: MeshFactory, operator: Operator, reviews: None) -> Mesh:
    mesh = make_mesh("productpage", trusted_keys=[operator.public], discovery_interval=0.2)
    mesh.start()
    canonical = "reviews.default.svc.cluster.local"
    assert wait_until(lambda: len(mesh.endpoint_table.endpoints(canonical)) == 2, timeout=15)
    return mesh


def served_by(mesh: Mesh, requests: int = 40) -> Counter[str]:
    with mesh.client(timeout=10) as client:
        return Counter(client.get("http://reviews/reviews/1").text for _ in range(requests))


def test_tampered_version_is_nacked_and_the_last_good_route_keeps_serving(
    caller: Mesh, signed_store: ConfigStore, redis_url: str, meshctl: Meshctl
) -> None:
    good = apply(signed_store, RULE + "---" + route_to("v1"))
    assert good.key_id == signed_store.signer.key_id  # type: ignore[union-attr]
    assert wait_until(at([caller], good.version))
    assert caller.snapshot.key_id == good.key_id
    assert served_by(caller) == {"v1": 40}

    forged = reroute_current(redis_url, "v2")  # a valid route, but not what the operator signed
    assert wait_until(nacked([caller], forged.version))
    reason = caller.watcher.nack.reason  # type: ignore[union-attr]
    assert reason.startswith("signature does not verify (tampered or signed by an untrusted key)")
    assert caller.snapshot.version == good.version and caller.running
    assert served_by(caller) == {"v1": 40}  # the last good route keeps serving

    # every instance reports the NACK; status shows the reason as it is
    assert wait_until(
        lambda: (
            sum(
                s.state == "NACK"
                for s in list_instances(signed_store.client, KEYS, signed_store.head())
            )
            == 3
        )
    )
    table = meshctl("status").output
    assert "NACK" in table and "signature does not verify (tampered" in table

    # the operator cannot sign on top of it by mistake; a signed rollback restores the routes
    with pytest.raises(SigningError, match="refusing to sign a change on top of the current"):
        apply(signed_store, route_to("v2"))
    restored = signed_store.rollback()
    assert restored.record is not None and restored.record.version == forged.version + 1
    assert wait_until(at([caller], restored.record.version))
    assert served_by(caller) == {"v1": 40}


def test_unsigned_version_is_nacked(
    caller: Mesh, signed_store: ConfigStore, redis_url: str, operator: Operator
) -> None:
    good = apply(signed_store, RULE + "---" + route_to("v1"))
    assert wait_until(at([caller], good.version))

    unsigned_store = ConfigStore.from_url(redis_url)  # a writer without the operator key
    try:
        unsigned = apply(unsigned_store, route_to("v2"))
    finally:
        unsigned_store.close()
    assert unsigned.key_id == "" and unsigned.signature == ""
    assert wait_until(nacked([caller], unsigned.version))
    assert caller.watcher.nack.reason.startswith(  # type: ignore[union-attr]
        f"unsigned config version; this instance trusts keys [{operator.key.key_id}]"
    )
    assert served_by(caller) == {"v1": 40}


def test_replayed_old_signed_version_is_nacked_also_after_a_restart(
    make_mesh: MeshFactory,
    signed_store: ConfigStore,
    redis_url: str,
    operator: Operator,
    tmp_path: Path,
) -> None:
    state = tmp_path / "replay-state"
    first = make_mesh("productpage", trusted_keys=operator.public, state_dir=state).start()
    old = apply(signed_store, RULE + "---" + route_to("v2"))
    new = apply(signed_store, route_to("v1"))
    assert wait_until(at([first], new.version))
    assert wait_until(lambda: any(state.rglob("*.json")))  # the disk copy of v2

    history = signed_store.history()
    assert [r.version for r in history] == [new.version, old.version]
    write_current(redis_url, history[1])  # v1, genuinely signed, copied back over v2
    assert wait_until(nacked([first], old.version))
    assert first.watcher.nack.reason.startswith(  # type: ignore[union-attr]
        f"replayed: v{old.version} is older than v{new.version}"
    )
    assert first.snapshot.version == new.version
    first.stop()

    # a restarted instance starts from its verified disk copy and still refuses the replay
    second = make_mesh("productpage", trusted_keys=operator.public, state_dir=state).start()
    assert wait_until(nacked([second], old.version))
    assert second.snapshot.version == new.version and second.snapshot.source == "disk"

    # the operator's tools notice too: no signed change on top of the replayed copy ...
    with pytest.raises(SigningError, match="not the newest stored version"):
        apply(signed_store, route_to("v2"))
    # ... and a rollback to the newest version is numbered above it, so instances take it
    result = signed_store.rollback(to=new.version)
    assert result.record is not None and result.record.version == new.version + 1
    assert wait_until(at([second], new.version + 1))


def test_key_rotation(
    make_mesh: MeshFactory, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trusted = tmp_path / "trusted"
    old, _, old_pub = write_key_pair(trusted, "old")
    new, _, _ = write_key_pair(tmp_path / "secret", "new")
    meshes = [make_mesh("reviews", v, trusted_keys=trusted).start() for v in ("v1", "v2")]
    with ExitStack() as stack:
        by_old = ConfigStore.from_url(redis_url, signer=old)
        stack.callback(by_old.close)
        first = apply(by_old, RULE + "---" + route_to("v1"))
        assert wait_until(at(meshes, first.version))

        # 1. every instance learns the new key (here: its .pub dropped into the trusted dir)
        (trusted / "new.pub").write_bytes((tmp_path / "secret" / "new.pub").read_bytes())
        # 2. the operator signs with the new key; it builds on versions the old key signed
        both = ConfigVerifier([old.public, new.public], mesh="default")
        by_new = ConfigStore.from_url(redis_url, signer=new, trusted=both)
        stack.callback(by_new.close)
        second = apply(by_new, route_to("v2"))
        assert second.key_id == new.key_id
        assert wait_until(at(meshes, second.version))

        # 3. the old key is retired: a version it signs (a leaked key, say) is refused
        old_pub.unlink()
        with caplog.at_level(logging.WARNING, logger="meshware.security"):
            stale = apply(ConfigStore(by_old.client, signer=old, trusted=both), route_to("v1"))
            assert wait_until(nacked(meshes, stale.version))
        assert "trusted operator keys changed" in caplog.text
        for mesh in meshes:
            assert "untrusted key" in mesh.watcher.nack.reason  # type: ignore[union-attr]
            assert old.key_id in mesh.watcher.nack.reason  # type: ignore[union-attr]
            assert mesh.snapshot.version == second.version
        third = by_new.rollback(to=second.version)
        assert third.record is not None
        assert wait_until(at(meshes, third.record.version))


def test_unsigned_mode_accepts_unsigned_versions_and_says_so(
    make_mesh: MeshFactory, apply_yaml: Callable[[str], int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="meshware"):
        mesh = make_mesh("reviews", "v1").start()
    assert "CONFIG SIGNING IS OFF" in caplog.text and "MESHWARE_TRUSTED_KEYS" in caplog.text
    version = apply_yaml(RULE + "---" + route_to("v1"))
    assert wait_until(at([mesh], version))
    assert mesh.snapshot.key_id == ""


def test_tampered_disk_copy_is_not_loaded(
    make_mesh: MeshFactory, signed_store: ConfigStore, operator: Operator, tmp_path: Path
) -> None:
    state = tmp_path / "disk-state"
    first = make_mesh("reviews", "v1", trusted_keys=operator.public, state_dir=state).start()
    good = apply(signed_store, RULE + "---" + route_to("v1"))
    assert wait_until(at([first], good.version))
    first.stop()
    (lkg,) = state.rglob("*.json")
    saved = json.loads(lkg.read_text())
    assert saved["record"]["key_id"] == operator.key.key_id  # the signature is kept on disk

    dead = f"redis://127.0.0.1:{free_port()}/0"  # Redis unreachable: only the disk copy is left
    again = make_mesh(
        "reviews", "v1", trusted_keys=operator.public, state_dir=state, redis_url=dead
    )
    assert again.start(wait=0.2).snapshot.source == "disk"
    again.stop()

    documents = saved["record"]["documents"]
    assert documents.count('"subset":"v1"') == 1
    saved["record"]["documents"] = documents.replace('"subset":"v1"', '"subset":"v2"')
    lkg.write_text(json.dumps(saved))
    tampered = make_mesh(
        "reviews", "v1", trusted_keys=operator.public, state_dir=state, redis_url=dead
    ).start(wait=0.2)
    assert not tampered.snapshot.loaded and tampered.running


def test_trusted_keys_setting(operator: Operator, tmp_path: Path, redis_url: str) -> None:
    env = {
        "MESHWARE_SERVICE": "reviews",
        "MESHWARE_REDIS_URL": redis_url,
        "MESHWARE_TRUSTED_KEYS": f"{operator.public}:{operator.public.parent}",
    }
    mesh = Mesh.from_env(env)
    assert mesh.settings.trusted_keys == (operator.public, operator.public.parent)
    assert mesh.watcher.verifier is not None
    assert mesh.watcher.verifier.key_ids == (operator.key.key_id,)
    assert Mesh("reviews", trusted_keys=str(operator.public)).watcher.verifier is not None

    (tmp_path / "bad.pub").write_text("not a key")
    for value, message in (
        (str(tmp_path / "missing.pub"), "no such file or directory"),
        (str(tmp_path / "bad.pub"), "not a PEM public key"),
        (str(operator.private), "this is a private key"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            Mesh.from_env({**env, "MESHWARE_TRUSTED_KEYS": value})
        assert info.value.problems[0].path == "trusted_keys"


# -- the command line ----------------------------------------------------------------------


def test_keys_init_and_id(meshctl: Meshctl, tmp_path: Path) -> None:
    result = meshctl("keys", "init", "--dir", str(tmp_path / "k"), "--name", "ops-2025")
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "k" / "ops-2025.key", tmp_path / "k" / "ops-2025.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public.exists()
    key_id = OperatorKey.load(private).key_id
    assert f"operator key {key_id}" in result.output
    assert meshctl("keys", "id", str(public)).output.strip() == key_id
    assert meshctl("keys", "id", str(private)).output.strip() == key_id
    again = meshctl("keys", "init", "--dir", str(tmp_path / "k"), "--name", "ops-2025")
    assert again.exit_code == 1 and "already exists" in again.output
    assert OperatorKey.load(private).key_id == key_id  # the existing key was kept
    bad = meshctl("keys", "id", str(tmp_path / "nope.pub"))
    assert bad.exit_code == 1 and "no such key file" in bad.output


def test_apply_with_and_without_a_signing_key(
    meshctl: Meshctl, operator: Operator, tmp_path: Path, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE + "---" + route_to("v1"))
    routes = tmp_path / "routes.yaml"
    routes.write_text(route_to("v2"))

    unsigned = meshctl("apply", "-f", str(rules))
    assert unsigned.exit_code == 0
    assert "config v1 was stored UNSIGNED" in unsigned.stderr
    assert "will reject it" in unsigned.stderr

    # switching to signed config: the unsigned base has to be adopted explicitly
    refused = meshctl("apply", "-f", str(routes), "--signing-key", str(operator.private))
    assert refused.exit_code == 1 and "--adopt-unsigned" in refused.stderr
    signed = meshctl(
        "apply", "-f", str(routes), "--signing-key", str(operator.private), "--adopt-unsigned"
    )
    assert signed.exit_code == 0, signed.output
    assert "config v2 stored (epoch" in signed.stdout
    assert f"signed by key {operator.key.key_id}" in signed.stdout
    assert "UNSIGNED" not in signed.stderr

    # MESHWARE_SIGNING_KEY works as well, for delete and rollback too
    env_signed = CliEnv(redis_url, {"MESHWARE_SIGNING_KEY": str(operator.private)})
    deleted = env_signed("delete", "vs", "reviews")
    assert deleted.exit_code == 0 and "signed by key" in deleted.stdout
    assert env_signed("rollback").exit_code == 0  # to v2, signed: stored as v4
    unsigned_target = env_signed("rollback", "--to", "1")
    assert unsigned_target.exit_code == 1 and "refusing to sign" in unsigned_target.stderr
    history = json.loads(meshctl("history", "-o", "json").stdout)
    assert [h["key_id"] for h in history] == [operator.key.key_id] * 3 + [""]
    table = meshctl("history").stdout
    assert "SIGNED BY" in table and "unsigned" in table and operator.key.key_id in table

    # a key file that is not a usable key: a clear error, nothing stored
    (tmp_path / "bad.key").write_text("nope")
    bad = meshctl("apply", "-f", str(routes), "--signing-key", str(tmp_path / "bad.key"))
    assert bad.exit_code == 1 and "not a PEM private key" in bad.stderr
    assert json.loads(meshctl("history", "-o", "json").stdout)[0]["version"] == 4


class CliEnv:
    """The CLI in-process with extra environment variables."""

    def __init__(self, redis_url: str, env: dict[str, str]) -> None:
        self.redis_url = redis_url
        self.env = env

    def __call__(self, *args: str) -> Result:
        from click.testing import CliRunner

        from meshware.cli.main import cli

        return CliRunner().invoke(
            cli,
            ["--redis-url", self.redis_url, *args],
            catch_exceptions=False,
            env={"COLUMNS": "250", **self.env},
        )
