"""Certificate renewal and trust-bundle rotation.

The phases of ``meshware ca rotate`` on a CA directory, a running CA service following them
without a restart, the renewer's schedule; then two long runs (marked ``slow``): STRICT
services under ``meshware serve`` that get their certificates from ``meshware ca serve
--ttl 10s`` while a client mesh (enrolled and renewing too) drives requests through them
without pause, once for 40 s of renewals and once through a whole root rotation, with zero
failed requests.
"""

from __future__ import annotations

import random
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meshware import Mesh
from meshware.cli.main import cli
from meshware.demo.services import Service
from meshware.embedded_redis import free_port
from meshware.security.ca import (
    CAError,
    CertificateAuthority,
    check_issued_by,
    fingerprint,
    load_pem_certificates,
    write_credentials,
)
from meshware.security.ca_service import CAService
from meshware.security.enroll import (
    HINT_SPREAD,
    MIN_HINT_INTERVAL,
    CAClient,
    CertificateRenewer,
)
from meshware.security.rotation import rotate, rotation_state
from tests.ca_server import CAServer
from tests.helpers import wait_until
from tests.transport.conftest import wait_for_endpoints

RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
TTL = 10.0


def roots_of(directory: Path) -> list[str]:
    return [
        fingerprint(r) for r in load_pem_certificates((directory / "root-cert.pem").read_bytes())
    ]


# -- the phases on a CA directory ---------------------------------------------------------------


def test_the_three_phases_move_the_bundle_and_the_signer_in_order(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    old = CertificateAuthority.init(directory)
    (old_root,) = roots_of(directory)
    old_intermediate = old.intermediate

    for early in ("switch", "remove"):
        with pytest.raises(CAError, match="comes after"):
            rotate(directory, early)  # type: ignore[arg-type]

    added = rotate(directory, "add")
    assert added.phase == "added" and added.since
    assert added.roots[0] == old_root and len(added.roots) == 2
    new_root = added.roots[1]
    ca = CertificateAuthority.load(directory)
    assert ca.intermediate == old_intermediate  # still signing with the old root
    with pytest.raises(CAError, match="already in progress"):
        rotate(directory, "add")
    with pytest.raises(CAError, match="comes after"):
        rotate(directory, "remove")

    switched = rotate(directory, "switch")
    assert switched.phase == "switched" and switched.roots == added.roots
    ca = CertificateAuthority.load(directory)
    assert ca.intermediate != old_intermediate
    roots = load_pem_certificates(ca.bundle_pem)
    assert check_issued_by(ca.intermediate, [r for r in roots if fingerprint(r) == new_root])
    assert ca.intermediate.subject != old_intermediate.subject  # no name clash in a bundle

    removed = rotate(directory, "remove")
    assert removed.phase is None and removed.roots == (new_root,)
    assert CertificateAuthority.load(directory).intermediate == ca.intermediate
    assert not (directory / "next").exists()
    # the replaced files are archived, keys 0600
    archived = sorted(p.name for p in (directory / "archive").rglob("*.pem"))
    assert archived == [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "root-key.pem",
    ]
    for key in (directory / "archive").rglob("*key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "root-key.pem").stat().st_mode) == 0o600
    assert roots_of(next((directory / "archive").glob("*-remove")))[0] == old_root
    # a second rotation works the same way
    assert rotate(directory, "add").roots[0] == new_root


def test_rotate_command(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = str(tmp_path / "ca")
    assert runner.invoke(cli, ["ca", "init", "--dir", directory]).exit_code == 0
    result = runner.invoke(cli, ["ca", "rotate", "--dir", directory, "--phase", "add"])
    assert result.exit_code == 0, result.output
    assert "--phase switch" in result.output and result.output.count("root sha256:") == 2
    result = runner.invoke(cli, ["ca", "rotate", "--dir", directory, "--phase", "remove"])
    assert result.exit_code == 1 and "remove comes after switch" in result.output
    result = runner.invoke(cli, ["ca", "rotate", "--dir", directory, "--phase", "status"])
    assert result.exit_code == 0 and "added since" in result.output
    # an operator's own new root
    CertificateAuthority.init(tmp_path / "theirs")
    result = runner.invoke(
        cli,
        ["ca", "rotate", "--dir", str(tmp_path / "theirs"), "--phase", "add",
         "--root-cert", str(tmp_path / "ca" / "next" / "root-cert.pem"),
         "--root-key", str(tmp_path / "ca" / "next" / "root-key.pem")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "theirs" / "next" / "root-key.pem").exists()  # never kept
    assert rotation_state(tmp_path / "theirs").roots[1] == roots_of(tmp_path / "ca")[1]


def test_a_running_service_follows_the_phases_without_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.init(directory)
    service = CAService(directory, refresh_interval=0.1)
    service.refresh()
    serving = directory / "serving" / "cert.pem"
    first_serving = serving.read_bytes()
    rotate(directory, "add")
    service.refresh()
    assert service.authority.bundle_pem == (directory / "root-cert.pem").read_bytes()
    assert len(load_pem_certificates((directory / "serving" / "bundle.pem").read_bytes())) == 2
    assert serving.read_bytes() != first_serving  # re-issued with the CA change
    rotate(directory, "switch")
    service.refresh()
    chain = load_pem_certificates(serving.read_bytes())
    assert chain[1] == CertificateAuthority.load(directory).intermediate
    # a half-written switch (new key, old certificate) is not loaded: the last good CA stays
    before = service.authority.intermediate
    archived_key = next((directory / "archive").glob("*/ca-key.pem"))
    (directory / "ca-key.pem").write_bytes(archived_key.read_bytes())
    assert service.authority.intermediate == before


# -- the renewer's schedule ---------------------------------------------------------------------


def test_renewal_is_due_at_45_to_55_percent_of_the_validity_left(tmp_path: Path) -> None:
    client = CAClient("https://127.0.0.1:1", tmp_path, service="ratings")
    renewer = CertificateRenewer(client, rng=random.Random(7))
    delays = [renewer.next_delay(1000.0, 0.0) for _ in range(2000)]
    assert min(delays) >= 450.0 and max(delays) <= 550.0
    assert len({round(d) for d in delays}) > 50  # spread, not lockstep
    assert renewer.next_delay(100.0, 200.0) == 0.0  # already expired: now
    # retries back off exponentially, capped, never past a quarter of what is left
    renewer = CertificateRenewer(client, rng=random.Random(7), min_retry=1.0, max_retry=30.0)
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        delay = renewer.retry_delay(attempt, not_after=10_000.0, now=0.0)
        assert ceiling / 2 <= delay <= ceiling
    assert renewer.retry_delay(10, not_after=8.0, now=0.0) <= 2.0
    assert renewer.retry_delay(10, not_after=0.0, now=5.0) <= 30.0


def test_bundle_hints_are_rate_limited(tmp_path: Path) -> None:
    now = [1000.0]
    client = CAClient("https://127.0.0.1:1", tmp_path, service="ratings")
    renewer = CertificateRenewer(client, clock=lambda: now[0], rng=random.Random(3))
    renewer.renew_soon(3600)  # (what start() plans: far away)
    planned = renewer.due
    renewer.bundle_hint()
    assert now[0] <= renewer.due <= now[0] + HINT_SPREAD < planned
    assert renewer.hints == 1
    first = now[0]
    for _ in range(100):  # a flood within the interval: one more, deferred; the rest dropped
        now[0] += MIN_HINT_INTERVAL / 200
        renewer.bundle_hint()
    assert renewer.hints == 2
    now[0] = first + MIN_HINT_INTERVAL + 0.1  # the deferred one is due: the next is deferred
    renewer.bundle_hint()
    assert renewer.hints == 3
    now[0] = first + 3 * MIN_HINT_INTERVAL  # quiet long enough: acted upon at once
    renewer.bundle_hint()
    assert renewer.hints == 4


# -- under load -------------------------------------------------------------------------------


@dataclass
class Load:
    """Requests through the client mesh, without pause, from two threads, until stopped:
    ``GET ratings/whoami`` (this mesh's identity must arrive) and ``GET reviews/call/ratings``
    (reviews calls ratings through its own mesh client, over mutual TLS)."""

    mesh: Mesh
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(2):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _check(self, client: httpx.Client, n: int) -> None:
        if n % 2 == 0:
            response = client.get("http://ratings/whoami")
            body: Any = response.json() if response.status_code == 200 else {}
            good = body.get("peer") == PRODUCTPAGE
        else:
            response = client.get("http://reviews/call/ratings")
            body = response.json() if response.status_code == 200 else {}
            good = body.get("status") == 200 and body["body"].get("peer") == REVIEWS
        if not good:
            raise AssertionError(f"{response.request.url}: {response.status_code} {body}")

    def _run(self, n: int) -> None:
        with self.mesh.client(timeout=10) as client:
            i = n
            while not self._stop.is_set():
                try:
                    self._check(client, i)
                except Exception as exc:
                    self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
                else:
                    self.ok += 1
                i += 1
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@dataclass
class Mesh3:
    """ratings and reviews under ``meshware serve`` (STRICT, certificates from the CA
    service), and a client mesh ``productpage`` enrolled with the same CA."""

    ca: CAServer
    admin: dict[str, int]
    client: Mesh

    def certs(self, name: str) -> dict[str, Any]:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.admin[name]}/certs", timeout=5)
            return answer.json() if answer.status_code == 200 else {}  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return {}

    def states(self) -> dict[str, dict[str, Any]]:
        """Each workload's certificate state (the client's read in-process)."""
        from meshware.admin import certificate_state

        states = {name: self.certs(name) for name in self.admin}
        states["productpage"] = certificate_state(self.client) or {}
        return states


@pytest.fixture
def mesh3(
    tmp_path: Path,
    redis_url: str,
    serve: Callable[..., list[Service]],
    make_mesh: Callable[..., Mesh],
) -> Mesh3:
    CertificateAuthority.init(tmp_path / "ca")
    ca = CAServer(tmp_path / "ca", tmp_path / "logs" / "ca.log", ttl="10s", redis_url=redis_url)
    ca.start()
    admin = {"ratings": free_port(), "reviews": free_port()}
    services = [
        Service(name, "v1", app="tests.rotation_app:app",
                args=("--ca-url", ca.url, "--join-token", ca.token(name), "--mtls", "strict",
                      "--admin-port", str(admin[name])))
        for name in admin
    ]  # fmt: skip
    try:
        serve(*services)
        client = make_mesh(
            "productpage",
            ca_url=ca.url,
            join_token=ca.token("productpage"),
            cert_dir=tmp_path / "productpage",
            discovery_interval=0.2,
        ).start()
        wait_for_endpoints(client, "ratings", 1, timeout=30)
        wait_for_endpoints(client, "reviews", 1, timeout=30)
    except BaseException:
        ca.stop()
        raise
    world = Mesh3(ca, admin, client)
    assert wait_until(lambda: all(world.states().values()), timeout=20), world.states()
    return world


@pytest.fixture
def world(mesh3: Mesh3) -> Any:
    yield mesh3
    mesh3.ca.stop()


def warm_up(world: Mesh3) -> None:
    """Until both routes answer once (endpoints known, connections made)."""
    probe = Load(world.client)

    def once() -> bool:
        try:
            with world.client.client(timeout=10) as http:
                probe._check(http, 0)
                probe._check(http, 1)
        except Exception:
            return False
        return True

    assert wait_until(once, timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_certificates_rotate_every_few_seconds_under_load_without_a_failed_request(
    world: Mesh3,
) -> None:
    """TTL 10 s: each workload renews about every 5 s; a 40 s load run sees at least three
    renewals of every workload and not one failed request."""
    warm_up(world)
    serials: dict[str, set[str]] = {name: set() for name in world.states()}
    load = Load(world.client).start()
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            for name, state in world.states().items():
                if state.get("serial"):
                    serials[name].add(state["serial"])
            time.sleep(0.5)
    finally:
        load.stop()
    states = world.states()
    assert load.failures == [], load.failures[:10]
    assert load.ok > 400, load.ok
    for name, state in states.items():
        assert state["renewer"]["renewals"] >= 3, (name, state)
        assert state["renewer"]["last_error"] is None, (name, state)
        assert len(serials[name]) >= 4, (name, serials[name])  # every renewal was served
        assert state["generation"] >= 4, (name, state)  # ... and loaded by the process
    assert "renewal" in world.ca.log()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_root_rotation_under_load_fails_no_request(world: Mesh3, tmp_path: Path) -> None:
    """add → wait ≥ TTL → switch → wait ≥ TTL → remove → wait ≥ TTL, under continuous load:
    zero failures; afterwards every workload chains to the new root and a certificate from
    the old root is refused."""
    directory = world.ca.directory
    (old_root,) = roots_of(directory)
    old_ca = CertificateAuthority.load(directory)
    old_client = tmp_path / "old-reviews"
    write_credentials(old_client, old_ca.issue("reviews"))
    warm_up(world)
    load = Load(world.client).start()
    runner = CliRunner()

    def phase(name: str, settled: Callable[[dict[str, Any]], bool]) -> None:
        started = time.monotonic()
        result = runner.invoke(cli, ["ca", "rotate", "--dir", str(directory), "--phase", name])
        assert result.exit_code == 0, result.output
        # every workload shows the phase's effect (an early renewal on the Redis hint, or
        # the next scheduled one) ...
        assert wait_until(lambda: all(settled(s) for s in world.states().values()), timeout=30), (
            name,
            world.states(),
        )
        # ... and the operator waits at least one certificate lifetime in any case
        time.sleep(max(0.0, TTL + 1 - (time.monotonic() - started)))

    try:
        phase("add", lambda s: len(s.get("trust_bundle", {}).get("roots", [])) == 2)
        new_root = roots_of(directory)[1]
        phase("switch", lambda s: s.get("issuer") == _intermediate_name(directory))
        phase("remove", lambda s: s.get("trust_bundle", {}).get("roots") == [new_root])
    finally:
        load.stop()
    assert load.failures == [], load.failures[:10]
    assert load.ok > 400, load.ok
    assert roots_of(directory) == [new_root] and new_root != old_root

    # every workload's certificate now chains to the new root only
    new_ca = CertificateAuthority.load(directory)
    new_client = tmp_path / "new-reviews"
    write_credentials(new_client, new_ca.issue("reviews"))
    new_only = _tls_client(new_client, trust=new_ca.bundle_pem)
    for name in ("ratings", "reviews"):
        url = f"https://127.0.0.1:{_port_of(world, name)}/whoami"
        answer = httpx.get(url, verify=new_only, timeout=10)
        assert answer.status_code == 200 and answer.json()["peer"] == REVIEWS
    client_chain = load_pem_certificates((tmp_path / "productpage" / "cert.pem").read_bytes())
    assert check_issued_by(client_chain[1], load_pem_certificates(new_ca.bundle_pem))
    # and a certificate from the old root is refused in the handshake
    old_only = _tls_client(old_client, trust=new_ca.bundle_pem)
    with pytest.raises(httpx.TransportError):
        httpx.get(
            f"https://127.0.0.1:{_port_of(world, 'ratings')}/whoami", verify=old_only, timeout=10
        )


def _intermediate_name(directory: Path) -> str:
    return CertificateAuthority.load(directory).intermediate.subject.rfc4514_string()


def _tls_client(credentials: Path, *, trust: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=trust.decode())
    context.load_cert_chain(credentials / "cert.pem", credentials / "key.pem")
    return context


def _port_of(world: Mesh3, name: str) -> int:
    endpoints = world.client.endpoint_table.endpoints(f"{name}.default.svc.cluster.local")
    return int(endpoints[0].port)
