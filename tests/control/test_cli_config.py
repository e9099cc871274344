"""apply / get / delete / history / rollback against a real Redis, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import yaml
from click.testing import CliRunner, Result

from meshware.cli.main import cli
from meshware.config.parse import Document, load_files
from meshware.config.store import ConfigStore, normalise_document
from meshware.embedded_redis import RedisServer
from meshware.errors import NotFoundError
from tests.helpers import BOOKINFO

DESTINATION_RULES = str(BOOKINFO / "destination-rule-all.yaml")
REVIEWS_90_10 = str(BOOKINFO / "virtual-service-reviews-90-10.yaml")
REVIEWS_JASON = str(BOOKINFO / "virtual-service-reviews-jason-v2-v3.yaml")

Meshctl = Callable[..., Result]


def _docs(*files: str) -> list[dict[str, object]]:
    return [normalise_document(d.body) for d in load_files(files)]


def _key(doc: dict[str, object]) -> tuple[str, str]:
    meta = doc["metadata"]
    assert isinstance(meta, dict)
    return (str(doc["kind"]), str(meta["name"]))


def _current_version(url: str) -> int:
    store = ConfigStore.from_url(url)
    try:
        current = store.current()
        return current.version if current else 0
    finally:
        store.close()


def test_apply_get_roundtrip_json_and_yaml(meshctl: Meshctl, redis_url: str) -> None:
    result = meshctl("apply", "-f", DESTINATION_RULES, "-f", REVIEWS_90_10)
    assert result.exit_code == 0, result.output
    assert "destinationrule/reviews created" in result.output
    assert "virtualservice/reviews created" in result.output
    assert "config v1 stored" in result.output

    applied = {_key(d): d for d in _docs(DESTINATION_RULES, REVIEWS_90_10)}

    as_json = json.loads(meshctl("get", "-o", "json").output)
    assert as_json["kind"] == "List"
    assert {_key(d): d for d in as_json["items"]} == applied

    as_yaml = [d for d in yaml.safe_load_all(meshctl("get", "-o", "yaml").output) if d]
    assert {_key(d): d for d in as_yaml} == applied

    one = json.loads(meshctl("get", "vs", "reviews", "-o", "json").output)
    assert one == applied[("VirtualService", "reviews")]
    weights = [r["weight"] for r in one["spec"]["http"][0]["route"]]
    assert weights == [90, 10]

    table = meshctl("get", "destinationrules").output
    assert "DestinationRule" in table and "reviews" in table


def test_get_output_can_be_applied_again_unchanged(meshctl: Meshctl, tmp_path: Path) -> None:
    assert meshctl("apply", "-f", DESTINATION_RULES, "-f", REVIEWS_JASON).exit_code == 0
    for fmt in ("yaml", "json"):
        dumped = tmp_path / f"dump.{fmt}"
        dumped.write_text(meshctl("get", "-o", fmt).output)
        again = meshctl("apply", "-f", str(dumped))
        assert again.exit_code == 0, again.output
        assert "no changes" in again.output
        assert "created" not in again.output and "configured" not in again.output


def test_versions_history_rollback_delete(meshctl: Meshctl, redis_url: str) -> None:
    assert meshctl("apply", "-f", DESTINATION_RULES).exit_code == 0  # v1
    assert meshctl("apply", "-f", REVIEWS_90_10).exit_code == 0  # v2
    assert _current_version(redis_url) == 2

    same = meshctl("apply", "-f", REVIEWS_90_10)
    assert "no changes" in same.output
    assert _current_version(redis_url) == 2

    switched = meshctl("apply", "-f", REVIEWS_JASON)  # v3 replaces the reviews route
    assert "virtualservice/reviews configured" in switched.output
    assert _current_version(redis_url) == 3

    rolled = meshctl("rollback")  # v4 == v2
    assert rolled.exit_code == 0, rolled.output
    assert "config v4 stored" in rolled.output
    vs = json.loads(meshctl("get", "vs", "reviews", "-o", "json").output)
    assert [r["weight"] for r in vs["spec"]["http"][0]["route"]] == [90, 10]

    deleted = meshctl("delete", "virtualservice", "reviews")  # v5
    assert deleted.exit_code == 0, deleted.output
    assert "virtualservice/reviews deleted" in deleted.output
    assert _current_version(redis_url) == 5
    assert meshctl("get", "vs", "reviews").exit_code == 1

    to_v3 = meshctl("rollback", "--to", "3")  # v6 == v3
    assert to_v3.exit_code == 0, to_v3.output
    assert _current_version(redis_url) == 6
    vs = json.loads(meshctl("get", "vs", "reviews", "-o", "json").output)
    assert vs["spec"]["http"][0]["match"][0]["headers"]["end-user"] == {"exact": "jason"}

    history = json.loads(meshctl("history", "-o", "json").output)
    assert [h["version"] for h in history] == [6, 5, 4, 3, 2, 1]
    assert [h["action"] for h in history] == [
        "rollback to v3",
        "delete",
        "rollback to v2",
        "apply",
        "apply",
        "apply",
    ]
    assert history[1]["changes"] == [{"change": "deleted", "resource": "VirtualService/reviews"}]
    old = json.loads(meshctl("get", "vs", "reviews", "-o", "json", "--revision", "3").output)
    assert old["spec"]["http"][0]["match"][0]["headers"]["end-user"] == {"exact": "jason"}


def test_dry_run_prints_diff_and_stores_nothing(meshctl: Meshctl, redis_url: str) -> None:
    assert meshctl("apply", "-f", DESTINATION_RULES, "-f", REVIEWS_90_10).exit_code == 0
    before = redis.Redis.from_url(redis_url).hgetall("meshware:default:config")
    result = meshctl("apply", "--dry-run", "-f", REVIEWS_JASON)
    assert result.exit_code == 0, result.output
    assert "virtualservice/reviews configured (dry run)" in result.output
    assert "+" in result.output and "end-user" in result.output
    assert "would store config v2" in result.output
    assert redis.Redis.from_url(redis_url).hgetall("meshware:default:config") == before
    assert meshctl("delete", "--dry-run", "vs", "reviews").exit_code == 0
    assert _current_version(redis_url) == 1


def test_delete_that_breaks_a_reference_is_refused(meshctl: Meshctl, redis_url: str) -> None:
    assert meshctl("apply", "-f", DESTINATION_RULES, "-f", REVIEWS_90_10).exit_code == 0
    result = CliRunner().invoke(cli, ["--redis-url", redis_url, "delete", "dr", "reviews"])
    assert result.exit_code == 1
    assert "subset" in result.output
    assert _current_version(redis_url) == 1


def test_unknown_resource_and_version_are_clear_errors(meshctl: Meshctl) -> None:
    assert meshctl("apply", "-f", DESTINATION_RULES).exit_code == 0
    missing = CliRunner().invoke(cli, ["--redis-url", "redis://127.0.0.1:1", "get"])
    assert missing.exit_code == 2
    assert "cannot reach Redis" in missing.output
    assert meshctl("delete", "vs", "nope").exit_code == 1
    assert meshctl("rollback", "--to", "42").exit_code == 1
    bad_kind = meshctl("get", "gateway")
    assert bad_kind.exit_code == 1 and "unknown kind" in bad_kind.output


def test_meshes_are_namespaced(meshctl: Meshctl, redis_url: str) -> None:
    assert meshctl("--mesh", "blue", "apply", "-f", DESTINATION_RULES).exit_code == 0
    assert json.loads(meshctl("--mesh", "green", "get", "-o", "json").output)["items"] == []
    assert len(json.loads(meshctl("--mesh", "blue", "get", "-o", "json").output)["items"]) > 0
    keys = redis.Redis.from_url(redis_url, decode_responses=True).keys("*")
    assert keys and all(k.startswith("meshware:blue:") for k in keys)


def test_password_and_acl_user(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path / "r", password="s3cret") as server:
        runner = CliRunner()
        ok = runner.invoke(cli, ["--redis-url", server.url, "apply", "-f", DESTINATION_RULES])
        assert ok.exit_code == 0, ok.output
        admin = redis.Redis.from_url(server.url)
        admin.execute_command(
            "ACL", "SETUSER", "operator", "on", ">opw", "~meshware:*", "&*", "+@all"
        )
        acl_url = f"redis://operator:opw@127.0.0.1:{server.port}/0"
        got = runner.invoke(cli, ["--redis-url", acl_url, "get", "-o", "json"])
        assert got.exit_code == 0, got.output
        bad = runner.invoke(
            cli, ["--redis-url", f"redis://:wrong@127.0.0.1:{server.port}/0", "get"]
        )
        assert bad.exit_code == 2
        assert "wrong" not in bad.output  # the password is never echoed
        assert "Traceback" not in bad.output


@pytest.mark.parametrize("env_url", [True, False])
def test_redis_url_from_environment(
    redis_url: str, env_url: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    args = ["apply", "-f", DESTINATION_RULES]
    if env_url:
        monkeypatch.setenv("MESHWARE_REDIS_URL", redis_url)
    else:
        args = ["--redis-url", redis_url, *args]
    assert runner.invoke(cli, args).exit_code == 0
    assert _current_version(redis_url) == 1


def test_history_keeps_the_last_hundred_versions(redis_url: str) -> None:
    store = ConfigStore.from_url(redis_url)
    try:
        base = load_files([DESTINATION_RULES])
        store.apply(base)
        for weight in range(1, 105):  # versions 2..105
            doc = {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "reviews"},
                "spec": {
                    "hosts": ["reviews"],
                    "http": [
                        {
                            "route": [
                                {
                                    "destination": {"host": "reviews", "subset": "v1"},
                                    "weight": 100 - weight % 100,
                                },
                                {
                                    "destination": {"host": "reviews", "subset": "v2"},
                                    "weight": weight % 100 or 1,
                                },
                            ]
                        }
                    ],
                },
            }
            assert store.apply([Document(doc, "gen.yaml", 1)]).record is not None
        versions = [r.version for r in store.history(1000)]
        assert versions == list(range(105, 5, -1))
        assert store.rollback(6).record is not None  # the oldest kept version
        with pytest.raises(NotFoundError):
            store.rollback(5)
    finally:
        store.close()
