"""Identities from SPIRE: credentials fetched from a real gRPC SPIFFE Workload API server
(:mod:`tests.workload_api_server`, the stand-in agent), written where the mesh reads them, kept
current through rotations, bundle changes and agent restarts, and served as STRICT mTLS by
``meshware serve --spiffe-endpoint``."""

from __future__ import annotations

import logging
import socket
import ssl
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from spiffe._proto import workload_pb2, workload_pb2_grpc

from meshware.cli.main import cli
from meshware.demo.services import Service
from meshware.errors import ConfigError
from meshware.security.ca import CertificateAuthority, Credentials, write_credentials
from meshware.security.identity import SpiffeId
from meshware.security.spire import SpireError, WorkloadAPICredentials
from meshware.security.tls import WorkloadTLS
from meshware.settings import Settings
from tests.helpers import wait_until
from tests.workload_api_server import HEADER, MISSING_HEADER, WorkloadAPIServer

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


@pytest.fixture
def agent(tmp_path: Path, ca: CertificateAuthority) -> Iterator[WorkloadAPIServer]:
    with WorkloadAPIServer(tmp_path / "agent.sock", ca) as server:
        yield server


@pytest.fixture
def watch(agent: WorkloadAPIServer) -> Iterator[Callable[..., WorkloadAPICredentials]]:
    """Start watchers on ``agent`` with fast backoff; every one is stopped at teardown."""
    started: list[WorkloadAPICredentials] = []

    def start(directory: Path | None = None, **options: object) -> WorkloadAPICredentials:
        options.setdefault("min_backoff", 0.05)
        options.setdefault("max_backoff", 0.5)
        watcher = WorkloadAPICredentials(agent.endpoint, directory, **options)  # type: ignore[arg-type]
        started.append(watcher)
        return watcher.start(timeout=20)

    yield start
    for watcher in started:
        watcher.stop()


def files_of(directory: Path) -> Credentials:
    return Credentials(
        (directory / "cert.pem").read_bytes(),
        (directory / "key.pem").read_bytes(),
        (directory / "bundle.pem").read_bytes(),
    )


def leaf_serial(credentials: Credentials) -> int:
    return credentials.certificate.serial_number


# -- fetching and watching ----------------------------------------------------------------------


def test_the_first_fetch_writes_the_three_files_in_a_private_directory(
    agent: WorkloadAPIServer, watch: Callable[..., WorkloadAPICredentials]
) -> None:
    watcher = watch()
    directory = watcher.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["bundle.pem", "cert.pem", "key.pem"]
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    # exactly what the agent handed out: leaf + intermediate, its key, the trust domain's roots
    assert files_of(directory) == agent.svids[0].credentials
    assert watcher.identity == SpiffeId.parse(REVIEWS)
    assert (watcher.updates, watcher.reconnects, watcher.connected) == (1, 0, True)
    tls = WorkloadTLS(directory)
    assert tls.identity.uri == REVIEWS
    assert agent.open_streams == 1  # watching
    watcher.stop()
    assert not directory.exists()  # the key does not outlive a temporary directory
    assert wait_until(lambda: agent.open_streams == 0, timeout=10)  # the stream is closed


def test_a_given_directory_is_kept_and_an_svid_is_chosen_by_spiffe_id(
    tmp_path: Path, ca: CertificateAuthority, watch: Callable[..., WorkloadAPICredentials]
) -> None:
    with WorkloadAPIServer(tmp_path / "two.sock", ca, services=("reviews", "ratings")) as agent:
        watcher = WorkloadAPICredentials(agent.endpoint, tmp_path / "certs", spiffe_id=RATINGS)
        with watcher:
            assert watcher.identity == SpiffeId.parse(RATINGS)
            assert files_of(tmp_path / "certs") == agent.svids[1].credentials
        assert (tmp_path / "certs" / "key.pem").exists()

        missing = WorkloadAPICredentials(
            agent.endpoint, spiffe_id="spiffe://cluster.local/ns/default/sa/details"
        )
        with pytest.raises(SpireError, match=rf"offers no SVID for .*details.*{RATINGS}"):
            missing.start(timeout=20)
        assert not missing.directory.exists()


def test_a_pushed_rotation_and_bundle_change_are_written_and_picked_up_by_workload_tls(
    tmp_path: Path,
    ca: CertificateAuthority,
    agent: WorkloadAPIServer,
    watch: Callable[..., WorkloadAPICredentials],
) -> None:
    directory = tmp_path / "certs"
    watcher = watch(directory)
    tls = WorkloadTLS(directory)
    first = tls.serial
    # a client of the next CA (same trust domain): not trusted yet
    next_ca = CertificateAuthority.init(tmp_path / "next-ca")
    write_credentials(tmp_path / "newcomer", next_ca.issue("details"))
    newcomer = client_context(tmp_path / "newcomer", ca.bundle_pem)
    assert not handshake(tls, newcomer)

    rotated = agent.rotate()
    assert wait_until(lambda: watcher.updates == 2, timeout=10)
    assert files_of(directory) == rotated
    assert tls.reload_if_changed()
    assert tls.serial == leaf_serial(rotated) != first
    assert tls.identity.uri == REVIEWS

    agent.set_bundle(ca.bundle_pem + next_ca.bundle_pem)
    assert wait_until(lambda: watcher.updates == 3, timeout=10)
    assert len(x509.load_pem_x509_certificates((directory / "bundle.pem").read_bytes())) == 2
    assert tls.reload_if_changed()
    assert len(tls.client_context().get_ca_certs()) == 2
    assert handshake(tls, newcomer)  # the new root is trusted now, in a real handshake
    assert watcher.reconnects == 0


def test_when_the_agent_goes_away_the_credentials_stay_and_the_watcher_reconnects(
    tmp_path: Path,
    agent: WorkloadAPIServer,
    watch: Callable[..., WorkloadAPICredentials],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshware.security.spire")
    directory = tmp_path / "certs"
    watcher = watch(directory)
    before = files_of(directory)

    agent.stop()
    assert wait_until(lambda: not watcher.connected, timeout=10)
    assert wait_until(lambda: watcher.last_error is not None, timeout=10)
    assert files_of(directory) == before  # the last credentials stay in place
    assert WorkloadTLS(directory).identity.uri == REVIEWS
    assert "lost the SPIFFE Workload API" in caplog.text

    agent.start()
    assert wait_until(lambda: watcher.reconnects == 1, timeout=15)
    assert watcher.connected and watcher.last_error is None
    assert agent.streams == 2
    assert watcher.updates == 1  # the same SVID again: nothing rewritten
    assert wait_until(lambda: "is back" in caplog.text, timeout=5)  # logged once, after

    rotated = agent.rotate()  # the new stream delivers what the agent pushes next
    assert wait_until(lambda: watcher.updates == 2, timeout=10)
    assert files_of(directory) == rotated


def test_the_agent_rejects_calls_without_the_security_header(agent: WorkloadAPIServer) -> None:
    with grpc.insecure_channel(f"unix:{agent.socket}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        for call, request in (
            (stub.FetchX509SVID, workload_pb2.X509SVIDRequest()),
            (stub.FetchX509Bundles, workload_pb2.X509BundlesRequest()),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                next(call(request, timeout=10))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == MISSING_HEADER
        assert agent.rejected == 2

        answer = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=[HEADER], timeout=10)
        first = next(answer)
        answer.cancel()
        assert [svid.spiffe_id for svid in first.svids] == [REVIEWS]
        bundles = stub.FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=[HEADER], timeout=10
        )
        assert set(next(bundles).bundles) == {"cluster.local"}
        bundles.cancel()


# -- errors -------------------------------------------------------------------------------------


def test_unusable_endpoints_and_a_silent_agent_are_clear_errors(tmp_path: Path) -> None:
    for endpoint in ("http://agent", "unix://relative/agent.sock", "tcp://spire-agent:8081"):
        with pytest.raises(SpireError, match="endpoint must be"):
            WorkloadAPICredentials(endpoint)
    with pytest.raises(SpireError, match=r"unix:// sockets only"):
        WorkloadAPICredentials("tcp://127.0.0.1:8081")
    silent = WorkloadAPICredentials(f"unix://{tmp_path}/nobody.sock", min_backoff=0.05)
    with pytest.raises(SpireError, match=r"no X\.509-SVID .* within 0\.5 s .*does not exist"):
        silent.start(timeout=0.5)


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, agent: WorkloadAPIServer
) -> None:
    monkeypatch.setitem(sys.modules, "spiffe", None)  # what ``import spiffe`` sees uninstalled
    with pytest.raises(SpireError, match=r"pip install 'meshware\[spire\]'"):
        WorkloadAPICredentials(agent.endpoint)


def test_settings_validate_the_endpoint() -> None:
    env = {"MESHWARE_SERVICE": "reviews"}
    for good in ("unix:///run/spire/agent.sock", "tcp://127.0.0.1:8081", "tcp://[::1]:8081"):
        settings = Settings.from_env({**env, "MESHWARE_SPIFFE_ENDPOINT": good})
        assert settings.spiffe_endpoint == good
    for bad in ("/run/spire/agent.sock", "unix:agent.sock", "tcp://agent:8081", "tcp://1.2.3.4"):
        with pytest.raises(ConfigError, match="spiffe_endpoint") as failure:
            Settings.from_env({**env, "MESHWARE_SPIFFE_ENDPOINT": bad})
        assert bad in str(failure.value)


def test_serve_refuses_a_second_source_of_credentials(tmp_path: Path) -> None:
    restored = dict.fromkeys(
        (
            "MESHWARE_SERVICE",
            "MESHWARE_VERSION",
            "MESHWARE_ADDRESS",
            "MESHWARE_REDIS_URL",
            "MESHWARE_MESH",
            "MESHWARE_CERT_DIR",
            "MESHWARE_MTLS",
            "MESHWARE_SPIFFE_ENDPOINT",
            "MESHWARE_CA_URL",
        )
    )
    serve = ["--redis-url", "redis://127.0.0.1:1/0", "serve", "tests.tls_app:app"]
    serve += ["--service", "ratings", "--spiffe-endpoint", f"unix://{tmp_path}/agent.sock"]
    runner = CliRunner()
    both = runner.invoke(cli, [*serve, "--cert-dir", str(tmp_path)], env=restored)
    assert both.exit_code == 1
    assert "--spiffe-endpoint and --cert-dir" in both.output
    ca_url = runner.invoke(cli, serve, env={**restored, "MESHWARE_CA_URL": "https://ca:8443"})
    assert ca_url.exit_code == 2  # a usage error: MESHWARE_CA_URL feeds --ca-url
    assert "--ca-url and --spiffe-endpoint" in ca_url.output


# -- end to end -----------------------------------------------------------------------------------


def test_serve_with_spiffe_endpoint_serves_strict_mtls_and_follows_rotation(
    tmp_path: Path, ca: CertificateAuthority, serve: Callable[..., list[Service]]
) -> None:
    with WorkloadAPIServer(tmp_path / "ratings.sock", ca, services=("ratings",)) as agent:
        (ratings,) = serve(
            Service(
                "ratings",
                "v1",
                app="tests.tls_app:app",
                args=("--spiffe-endpoint", agent.endpoint, "--mtls", "strict"),
            )
        )
        write_credentials(tmp_path / "reviews", ca.issue("reviews"))
        as_reviews = client_context(tmp_path / "reviews", ca.bundle_pem)
        url = f"https://127.0.0.1:{ratings.port}/whoami"

        def whoami() -> dict[str, object]:
            try:
                with httpx.Client(verify=as_reviews, timeout=5) as client:
                    return client.get(url).json()  # type: ignore[no-any-return]
            except (httpx.HTTPError, ValueError):
                return {}

        assert wait_until(lambda: bool(whoami()), timeout=30)
        assert whoami() == {"service": "ratings", "peer": REVIEWS, "xfcc": None}
        assert served_certificate(ratings.port, as_reviews) == (
            RATINGS,
            leaf_serial(agent.svids[0].credentials),
        )
        # STRICT: without a client certificate, or in plaintext, nothing gets through
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{ratings.port}/whoami", timeout=5)
        anonymous = client_context(None, ca.bundle_pem)
        with pytest.raises(httpx.TransportError), httpx.Client(verify=anonymous) as client:
            client.get(url, timeout=5)

        # SPIRE rotates: the running server presents the new certificate on new connections
        rotated = agent.rotate()
        assert wait_until(
            lambda: served_certificate(ratings.port, as_reviews) == (RATINGS, leaf_serial(rotated)),
            timeout=20,
            interval=0.2,
        )
        assert whoami() == {"service": "ratings", "peer": REVIEWS, "xfcc": None}


# -- TLS helpers ----------------------------------------------------------------------------------


def client_context(credentials: Path | None, bundle_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE IDs are URI SANs; checked by hand
    context.load_verify_locations(cadata=bundle_pem.decode())
    if credentials is not None:
        context.load_cert_chain(credentials / "cert.pem", credentials / "key.pem")
    return context


def served_certificate(port: int, context: ssl.SSLContext) -> tuple[str, int] | None:
    """The SPIFFE ID and serial of the certificate the server presents on a new connection."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(True)
    except OSError:
        return None
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(uris.get_values_for_type(x509.UniformResourceIdentifier)[0]), leaf.serial_number


def handshake(tls: WorkloadTLS, client: ssl.SSLContext) -> bool:
    """A real TLS handshake against ``tls.server_context()`` over a socket pair: True if the
    server accepted the client (and its certificate)."""
    server_side, client_side = socket.socketpair()
    accepted: list[bool] = []

    def serve() -> None:
        try:
            with tls.server_context().wrap_socket(server_side, server_side=True) as conn:
                conn.sendall(b"ok")
            accepted.append(True)
        except (ssl.SSLError, OSError):
            accepted.append(False)

    thread = threading.Thread(target=serve, daemon=True)
    server_side.settimeout(10)
    client_side.settimeout(10)
    thread.start()
    try:
        with client.wrap_socket(client_side) as conn:
            conn.recv(2)
    except (ssl.SSLError, OSError):
        pass
    finally:
        client_side.close()
    thread.join(10)
    return accepted == [True]
