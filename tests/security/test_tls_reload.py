"""Credential rotation in :class:`WorkloadTLS` with real handshakes: a reload builds fresh
contexts, so a trust bundle that drops a root stops trusting it; the server's one front
context follows every reload; open connections keep theirs; a half-written set is retried."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from meshware.config.discovery import Endpoint
from meshware.security.ca import CertificateAuthority, Credentials, write_credentials
from meshware.security.tls import WorkloadTLS, identity_of_der
from meshware.transport.secure import tls_target

RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


class EchoServer:
    """A TLS server on 127.0.0.1 using ``tls.server_context()``: on each accepted mutual TLS
    connection it sends the client's SPIFFE ID, then echoes lines until the client leaves."""

    def __init__(self, tls: WorkloadTLS) -> None:
        self.context = tls.server_context()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = self.listener.getsockname()
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        try:
            with self.context.wrap_socket(sock, server_side=True) as conn:
                der = conn.getpeercert(True)
                conn.sendall(f"{identity_of_der(der) if der else None}\n".encode())
                while data := conn.recv(1024):
                    conn.sendall(data)
        except (ssl.SSLError, OSError):
            self.refused += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()


def connect(address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(address, timeout=5)
    return context.wrap_socket(sock)


def greeting(conn: ssl.SSLSocket) -> str:
    return conn.recv(1024).decode().strip()


def client(directory: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(directory / "bundle.pem"))
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def refused(address: tuple[str, int], context: ssl.SSLContext) -> bool:
    """True when the server does not let this client in (TLS 1.3 reports a rejected client
    certificate after the client's side of the handshake, on the first read)."""
    try:
        with connect(address, context) as conn:
            return greeting(conn) == ""
    except (ssl.SSLError, OSError):
        return True


@pytest.fixture
def cas(tmp_path: Path) -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority.init(tmp_path / "old"), CertificateAuthority.init(tmp_path / "new")


def bundle_of(*authorities: CertificateAuthority) -> bytes:
    return b"".join(ca.issue("x").bundle_pem for ca in authorities)


def rewrite(directory: Path, credentials: Credentials, bundle: bytes) -> None:
    write_credentials(
        directory, Credentials(credentials.cert_pem, credentials.key_pem, bundle_pem=bundle)
    )


@pytest.fixture
def server_dir(tmp_path: Path, cas: tuple[CertificateAuthority, CertificateAuthority]) -> Path:
    directory = tmp_path / "ratings"
    write_credentials(directory, cas[0].issue("ratings"))
    return directory


@pytest.fixture
def echo(server_dir: Path) -> Iterator[tuple[WorkloadTLS, EchoServer]]:
    tls = WorkloadTLS(server_dir)
    server = EchoServer(tls)
    yield tls, server
    server.close()


def test_a_trust_bundle_rotation_adds_then_really_drops_the_old_root(
    tmp_path: Path,
    cas: tuple[CertificateAuthority, CertificateAuthority],
    server_dir: Path,
    echo: tuple[WorkloadTLS, EchoServer],
) -> None:
    old, new = cas
    tls, server = echo
    old_client = tmp_path / "reviews-old"
    write_credentials(old_client, old.issue("reviews"))
    new_client = tmp_path / "reviews-new"
    rewrite(new_client, new.issue("reviews"), bundle_of(old, new))

    with connect(server.address, client(old_client)) as before:
        assert greeting(before) == REVIEWS
        assert refused(server.address, client(new_client))  # the new root is not trusted yet

        # phase 1: both roots trusted, still the old certificate
        rewrite(server_dir, old.issue("ratings"), bundle_of(old, new))
        assert tls.reload_if_changed()
        assert not refused(server.address, client(new_client))
        assert not refused(server.address, client(old_client))

        # phase 2: a certificate from the new root
        rewrite(server_dir, new.issue("ratings"), bundle_of(old, new))
        assert tls.reload_if_changed()
        with connect(server.address, client(new_client)) as conn:
            assert greeting(conn) == REVIEWS
            der = conn.getpeercert(True)
            assert der is not None
        assert tls.serial == ssl_serial(der)

        # phase 3: the old root removed: its certificates are refused from now on
        rewrite(server_dir, new.issue("ratings"), bundle_of(new))
        assert tls.reload_if_changed()
        assert refused(server.address, client(old_client))
        assert not refused(server.address, client(new_client))

        # the connection opened before the rotation was never dropped
        before.sendall(b"still here\n")
        assert before.recv(1024) == b"still here\n"
    assert tls.generation == 4


def ssl_serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def test_the_mesh_client_uses_the_credentials_current_at_each_new_connection(
    tmp_path: Path, cas: tuple[CertificateAuthority, CertificateAuthority]
) -> None:
    old, new = cas
    directory = tmp_path / "reviews"
    write_credentials(directory, old.issue("reviews"))
    tls = WorkloadTLS(directory)
    target = tls_target(
        tls, None, "ratings.default.svc.cluster.local", Endpoint("127.0.0.1", 1, mtls=True)
    )
    assert target is not None
    assert target.expected == RATINGS
    first = target.context
    rewrite(directory, new.issue("reviews"), bundle_of(new))
    assert tls.reload_if_changed()
    assert target.context is tls.client_context() is not first
    assert not tls.reload_if_changed()  # nothing changed since


def test_a_half_written_set_is_retried_and_the_previous_credentials_keep_serving(
    cas: tuple[CertificateAuthority, CertificateAuthority],
    server_dir: Path,
    echo: tuple[WorkloadTLS, EchoServer],
    tmp_path: Path,
) -> None:
    old, _ = cas
    tls, server = echo
    serial = tls.serial
    renewed = old.issue("ratings")
    (server_dir / "cert.pem").write_bytes(renewed.cert_pem)  # the key is still the old one
    assert not tls.reload_if_changed()
    assert tls.serial == serial and tls.generation == 1
    reviews = tmp_path / "reviews"
    write_credentials(reviews, old.issue("reviews"))
    with connect(server.address, client(reviews)) as conn:
        assert greeting(conn) == REVIEWS  # still served with the previous credentials

    (server_dir / "key.pem").write_bytes(renewed.key_pem)
    assert tls.reload_if_changed()
    assert tls.serial == renewed.certificate.serial_number
    with connect(server.address, client(reviews)) as conn:
        assert greeting(conn) == REVIEWS
        der = conn.getpeercert(True)
        assert der is not None and ssl_serial(der) == tls.serial


def test_a_garbage_bundle_is_refused_and_nothing_changes(
    server_dir: Path, echo: tuple[WorkloadTLS, EchoServer]
) -> None:
    tls, _ = echo
    context = tls.client_context()
    (server_dir / "bundle.pem").write_bytes(b"not a certificate\n")
    assert not tls.reload_if_changed()
    assert tls.client_context() is context
    assert tls.generation == 1
