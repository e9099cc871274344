"""examples/docker-compose.yml stays consistent with the repository, checked without Docker.

CI has no Docker engine, so the stack itself is never started here: these tests read the
compose file and check that every Bookinfo service runs ``meshware serve`` on a module that
exists and advertises its own compose service name, that the ``apply`` service names
manifests that exist, and that ``meshware serve --advertise`` sets ``MESHWARE_ADDRESS``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import meshware.serving
from meshware.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COMPOSE = EXAMPLES / "docker-compose.yml"

BOOKINFO = {
    "productpage": ("productpage", "v1"),
    "details": ("details", "v1"),
    "reviews-v1": ("reviews", "v1"),
    "reviews-v2": ("reviews", "v2"),
    "reviews-v3": ("reviews", "v3"),
    "ratings": ("ratings", "v1"),
}


def _services() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "the compose file is not a mapping"
    services = document.get("services")
    assert isinstance(services, dict), "the compose file has no services"
    return services


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), f"command should be a list, got {command!r}"
    return [str(part) for part in command]


def _option(command: list[str], name: str) -> str:
    assert command.count(name) == 1, f"{name} should appear once in {command}"
    return command[command.index(name) + 1]


def test_the_compose_file_and_its_dockerfile_exist() -> None:
    assert COMPOSE.is_file()
    assert (EXAMPLES / "Dockerfile").is_file()
    services = _services()
    assert {"redis", "jaeger", "apply"} <= services.keys()
    for name in (*BOOKINFO, "apply"):
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name} is not built from the repository"
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
            EXAMPLES / "Dockerfile"
        ).resolve()


@pytest.mark.parametrize("name", sorted(BOOKINFO))
def test_each_bookinfo_service_serves_its_module_and_advertises_itself(name: str) -> None:
    service = _services()[name]
    command = _command(service)
    assert command[:2] == ["meshware", "serve"], command
    module, sep, attribute = command[2].partition(":")
    assert sep and attribute == "app", command[2]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"no module {module}"
    mesh_service, version = BOOKINFO[name]
    assert module == f"examples.bookinfo.{mesh_service}"
    assert _option(command, "--service") == mesh_service
    assert _option(command, "--version") == version
    assert _option(command, "--host") == "0.0.0.0"
    port = _option(command, "--port")
    advertise = _option(command, "--advertise")
    assert advertise == f"{name}:{port}", f"{name} advertises {advertise}"
    assert service["environment"]["MESHWARE_REDIS_URL"] == "redis://redis:6379/0"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_only_productpage_is_published_on_9080() -> None:
    services = _services()
    assert services["productpage"]["ports"] == ["9080:9080"]
    assert not any("ports" in services[name] for name in BOOKINFO if name != "productpage")


def test_the_apply_service_names_manifests_that_exist() -> None:
    service = _services()["apply"]
    command = _command(service)
    assert command[:2] == ["meshware", "apply"], command
    files = [command[i + 1] for i, part in enumerate(command) if part == "-f"]
    assert "examples/bookinfo/manifests/destination-rule-all.yaml" in files
    for file in files:
        assert (ROOT / file).is_file(), f"{file} does not exist"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_and_jaeger() -> None:
    services = _services()
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert {"16686:16686", "4318:4318"} <= set(jaeger["ports"])


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment ``meshware serve`` hands the app, with no server started.

    ``serve`` writes ``MESHWARE_*`` into ``os.environ``; each variable is recorded here first
    (set, then deleted) so that monkeypatch restores the test process's environment after.
    """
    seen: dict[str, str] = {}
    for var in ("SERVICE", "VERSION", "ADDRESS", "REDIS_URL", "MESH", "ADVERTISE_ADDRESS"):
        monkeypatch.setenv(f"MESHWARE_{var}", "unset")
        monkeypatch.delenv(f"MESHWARE_{var}")

    def fake_serve_target(target: str, **_: object) -> None:
        seen.update(os.environ)

    monkeypatch.setattr(meshware.serving, "serve_target", fake_serve_target)
    return seen


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--host", "0.0.0.0", "--port", "9080"], "127.0.0.1:9080"),
        (["--host", "10.1.2.3", "--port", "9080"], "10.1.2.3:9080"),
        (["--host", "0.0.0.0", "--port", "9080", "--advertise", "reviews-v2"], "reviews-v2:9080"),
        (["--port", "9080", "--advertise", "reviews-v2:19080"], "reviews-v2:19080"),
        (["--port", "9080", "--advertise", "[fd00::7]"], "[fd00::7]:9080"),
    ],
)
def test_serve_advertise_sets_the_address(
    arguments: list[str], expected: str, served: dict[str, str]
) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "examples.bookinfo.reviews:app", "--service", "reviews", *arguments]
    )
    assert result.exit_code == 0, result.output
    assert served["MESHWARE_ADDRESS"] == expected
    assert served["MESHWARE_SERVICE"] == "reviews"


def test_serve_advertise_reads_its_environment_variable(
    served: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHWARE_ADVERTISE_ADDRESS", "details")
    result = CliRunner().invoke(
        cli, ["serve", "examples.bookinfo.details:app", "--service", "details", "--port", "9081"]
    )
    assert result.exit_code == 0, result.output
    assert served["MESHWARE_ADDRESS"] == "details:9081"
