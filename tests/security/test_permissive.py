"""PeerAuthentication under ``meshware serve``: one port for mutual TLS and plaintext
(PERMISSIVE), STRICT and DISABLE, switched live through Redis, overridden with ``--mtls``, and
robust against clients that send nothing, garbage or half a handshake. Real processes, real
handshakes, certificates from a CA made for each test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meshware.demo.services import Service, ServiceGroup, ServiceStartError, assign_ports
from meshware.security.ca import CertificateAuthority, write_credentials
from tests.helpers import ROOT, wait_until

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
APP = "tests.tls_app:app"


class Pki:
    """A CA and the workload credentials made under it, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.init(root / "ca")

    def workload(self, service: str) -> Path:
        directory = self.root / service
        if not directory.exists():
            write_credentials(directory, self.ca.issue(service))
        return directory

    def client(self, service: str | None) -> ssl.SSLContext:
        """A TLS client trusting the bundle, presenting ``service``'s certificate (or none)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cafile=str(self.root / "ca" / "root-cert.pem"))
        if service is not None:
            directory = self.workload(service)
            context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def service(pki: Pki, name: str, *args: str, app: str = APP, creds: bool = True) -> Service:
    cert_args = ("--cert-dir", str(pki.workload(name))) if creds else ()
    return Service(name, "v1", app=app, args=(*cert_args, *args))


# -- clients -----------------------------------------------------------------------------------


def whoami(url: str, verify: ssl.SSLContext | bool = False) -> dict[str, object] | None:
    """``/whoami`` on a new connection; None when the server refused it."""
    try:
        with httpx.Client(verify=verify, timeout=5) as client:
            response = client.get(f"{url}/whoami")
    except httpx.TransportError:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


REQUEST = b"GET /whoami HTTP/1.1\r\nHost: ratings\r\n\r\n"


def plaintext_answer(port: int, payload: bytes = REQUEST, timeout: float = 10.0) -> bytes:
    """Everything the server sends back to ``payload`` on a new plaintext connection, until it
    closes (b"" when it closed without answering)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return received


def seen(url: str, pki: Pki) -> int:
    with httpx.Client(verify=pki.client("reviews"), timeout=5) as client:
        count: int = client.get(f"{url}/seen").json()["seen"]
    return count


def client_hello() -> bytes:
    """The first flight of a real TLS client: a complete ClientHello record."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16
    return hello


@contextlib.contextmanager
def connected(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        yield sock
    finally:
        sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Block (up to the socket's timeout) until the server closes; True if it did."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(15)


# -- the three modes ------------------------------------------------------------------------


def test_permissive_serves_mutual_tls_and_plaintext_on_one_port_with_keep_alive(
    pki: Pki, serve: Callable[..., list[Service]]
) -> None:
    (ratings,) = serve(service(pki, "ratings"))  # no PeerAuthentication: PERMISSIVE
    https, http = f"https://127.0.0.1:{ratings.port}", f"http://127.0.0.1:{ratings.port}"
    assert wait_until(lambda: whoami(https, pki.client("reviews")) is not None, timeout=20)

    with (
        httpx.Client(verify=pki.client("reviews"), timeout=5) as secure,
        httpx.Client(timeout=5) as plain,
    ):
        secure_ports, plain_ports = set(), set()
        for _ in range(25):  # interleaved on two long-lived connections
            for client, base, ports, peer in (
                (secure, https, secure_ports, REVIEWS),
                (plain, http, plain_ports, None),
            ):
                response = client.get(f"{base}/whoami")
                assert response.status_code == 200
                assert response.json() == {"service": "ratings", "peer": peer, "xfcc": None}
                stream = response.extensions["network_stream"]
                ports.add(stream.get_extra_info("client_addr")[1])
        assert len(secure_ports) == 1  # keep-alive: one connection for every request
        assert len(plain_ports) == 1

    # forged identity headers reach nobody, over plaintext either
    forged = httpx.get(
        f"{http}/whoami", headers={"x-forwarded-client-cert": f"URI={REVIEWS}"}, timeout=5
    )
    assert forged.json() == {"service": "ratings", "peer": None, "xfcc": None}


def test_a_permissive_wsgi_app_sees_the_peer_or_none(
    pki: Pki, serve: Callable[..., list[Service]]
) -> None:
    (ratings,) = serve(service(pki, "ratings", app="tests.tls_app:wsgi"))
    https, http = f"https://127.0.0.1:{ratings.port}", f"http://127.0.0.1:{ratings.port}"
    assert wait_until(lambda: whoami(https, pki.client("reviews")) is not None, timeout=20)
    assert whoami(https, pki.client("reviews")) == {
        "service": "ratings",
        "peer": REVIEWS,
        "xfcc": None,
    }
    assert whoami(http) == {"service": "ratings", "peer": None, "xfcc": None}


def test_strict_refuses_plaintext_before_reading_and_tls_without_a_client_certificate(
    pki: Pki, serve: Callable[..., list[Service]]
) -> None:
    strict, disabled = serve(
        service(pki, "ratings", "--mtls", "strict"),
        service(pki, "details", "--mtls", "disable"),
    )
    https = f"https://127.0.0.1:{strict.port}"
    assert wait_until(lambda: whoami(https, pki.client("reviews")) is not None, timeout=20)
    before = seen(https, pki)

    for _ in range(5):
        assert plaintext_answer(strict.port) == b""  # closed, no response
    assert whoami(https, pki.client(None)) is None  # TLS without a client certificate
    foreign = CertificateAuthority.init(pki.root / "foreign")
    write_credentials(pki.root / "intruder", foreign.issue("reviews"))
    intruder = pki.client(None)
    intruder.load_cert_chain(pki.root / "intruder" / "cert.pem", pki.root / "intruder" / "key.pem")
    assert whoami(https, intruder) is None
    assert seen(https, pki) == before  # the application was never called

    # DISABLE: a TLS ClientHello is refused, plaintext is served
    http = f"http://127.0.0.1:{disabled.port}"
    assert wait_until(lambda: whoami(http) is not None, timeout=20)
    assert whoami(f"https://127.0.0.1:{disabled.port}", pki.client("reviews")) is None
    assert plaintext_answer(disabled.port, client_hello()) == b""
    assert whoami(http) == {"service": "details", "peer": None, "xfcc": None}


# -- live switching ------------------------------------------------------------------------


def peer_authentication(mode: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )


def test_peer_authentication_applies_live_and_the_override_wins(
    pki: Pki, serve: Callable[..., list[Service]], apply_yaml: Callable[[str], int]
) -> None:
    ratings, details = serve(
        service(pki, "ratings"), service(pki, "details", "--mtls", "permissive")
    )
    ratings_http, details_http = (
        f"http://127.0.0.1:{ratings.port}",
        f"http://127.0.0.1:{details.port}",
    )
    https = f"https://127.0.0.1:{ratings.port}"
    assert wait_until(lambda: whoami(ratings_http) is not None, timeout=20)
    assert wait_until(lambda: whoami(details_http) is not None, timeout=20)

    with httpx.Client(verify=pki.client("reviews"), timeout=5) as pooled:
        assert pooled.get(f"{https}/whoami").json()["peer"] == REVIEWS

        apply_yaml(peer_authentication("STRICT"))  # mesh-wide
        assert wait_until(lambda: plaintext_answer(ratings.port) == b"", timeout=15)
        for _ in range(3):  # every new plaintext connection is refused now
            assert plaintext_answer(ratings.port) == b""
        assert pooled.get(f"{https}/whoami").json()["peer"] == REVIEWS  # pooled mTLS
        assert whoami(https, pki.client("reviews")) is not None  # new mTLS connections
        # details was started with --mtls permissive: the override beats the config
        assert whoami(details_http) == {"service": "details", "peer": None, "xfcc": None}

        apply_yaml(peer_authentication("PERMISSIVE"))
        assert wait_until(lambda: whoami(ratings_http) is not None, timeout=15)
        assert pooled.get(f"{https}/whoami").json()["peer"] == REVIEWS

        apply_yaml(peer_authentication("DISABLE"))
        assert wait_until(lambda: whoami(https, pki.client("reviews")) is None, timeout=15)
        assert whoami(ratings_http) is not None


def test_without_credentials_strict_fails_closed(
    pki: Pki,
    serve: Callable[..., list[Service]],
    apply_yaml: Callable[[str], int],
    tmp_path: Path,
) -> None:
    (ratings,) = serve(service(pki, "ratings", creds=False))
    http = f"http://127.0.0.1:{ratings.port}"
    assert wait_until(lambda: whoami(http) is not None, timeout=20)
    apply_yaml(peer_authentication("STRICT"))
    assert wait_until(lambda: plaintext_answer(ratings.port) == b"", timeout=15)
    log = tmp_path / "logs" / f"ratings-v1-{ratings.port}.log"
    assert "every inbound connection is refused" in log.read_text()
    apply_yaml(peer_authentication("PERMISSIVE"))  # plaintext is the half it can serve
    assert wait_until(lambda: whoami(http) is not None, timeout=15)


# -- robustness ------------------------------------------------------------------------------


def test_silent_garbage_and_half_handshakes_break_nothing(
    pki: Pki, serve: Callable[..., list[Service]]
) -> None:
    (ratings,) = serve(service(pki, "ratings"), env={"MESHWARE_PROTOCOL_DETECTION_TIMEOUT": "5"})
    https, http = f"https://127.0.0.1:{ratings.port}", f"http://127.0.0.1:{ratings.port}"
    assert wait_until(lambda: whoami(https, pki.client("reviews")) is not None, timeout=20)
    hello = client_hello()

    with connected(ratings.port) as silent, connected(ratings.port) as half_open:
        half_open.sendall(hello[: len(hello) // 2])  # and then nothing
        # others are served while those two wait
        for _ in range(5):
            assert whoami(https, pki.client("reviews")) is not None
            assert whoami(http) is not None
        assert still_open(silent)
        assert closed_by_server(silent)  # after the detection timeout
        assert closed_by_server(half_open)  # after the handshake timeout

    for payload in (b"\x00", b"\x16", hello[:10], hello[: len(hello) // 2], b"\xff" * 4):
        with connected(ratings.port) as sock:
            sock.sendall(payload)  # and hang up
    # plaintext that is not HTTP gets uvicorn's 400, as ever
    assert plaintext_answer(ratings.port, b"\x00\r\n\r\n").startswith(b"HTTP/1.1 400")

    with connected(ratings.port) as sock:
        sock.sendall(hello)  # a whole ClientHello, then the client vanishes mid-handshake
    assert whoami(https, pki.client("reviews")) == {
        "service": "ratings",
        "peer": REVIEWS,
        "xfcc": None,
    }
    assert whoami(http) == {"service": "ratings", "peer": None, "xfcc": None}


def test_shutdown_closes_connections_still_being_inspected(
    pki: Pki, redis_url: str, tmp_path: Path
) -> None:
    (ratings,) = assign_ports([service(pki, "ratings")], 0)
    group = ServiceGroup(
        [ratings],
        redis_url=redis_url,
        mesh="default",
        root=ROOT,
        log_dir=tmp_path / "logs",
        env={
            "MESHWARE_STATE_DIR": str(tmp_path / "state"),
            "MESHWARE_PROTOCOL_DETECTION_TIMEOUT": "600",  # far beyond this test
        },
    )
    group.start()
    try:
        group.wait_listening(60)
        https = f"https://127.0.0.1:{ratings.port}"
        assert wait_until(lambda: whoami(https, pki.client("reviews")) is not None, timeout=20)
        with connected(ratings.port) as silent, connected(ratings.port) as half_open:
            half_open.sendall(client_hello()[:20])
            assert whoami(https, pki.client("reviews")) is not None
            os.kill(group.pids()[0], signal.SIGTERM)  # drain, then uvicorn's graceful shutdown
            assert closed_by_server(silent)
            assert closed_by_server(half_open)

        def exited() -> bool:
            try:
                group.check_alive()
            except ServiceStartError as exc:
                return "exited with code 0" in str(exc)
            return False

        assert wait_until(exited, timeout=30)
    finally:
        group.stop()


# -- the mesh client -------------------------------------------------------------------------


def test_auto_mtls_to_a_permissive_service_uses_mutual_tls(
    pki: Pki, serve: Callable[..., list[Service]]
) -> None:
    ratings, reviews = serve(service(pki, "ratings"), service(pki, "reviews"))
    https = f"https://127.0.0.1:{reviews.port}"

    def call() -> dict[str, object]:
        try:
            with httpx.Client(verify=pki.client("productpage"), timeout=10) as client:
                response = client.get(f"{https}/call/ratings")
            body: dict[str, object] = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body

    assert wait_until(lambda: call().get("status") == 200, timeout=20), call()
    # ratings accepts plaintext too, yet reviews' mesh client chose mutual TLS: it saw the
    # caller's identity
    assert call()["body"] == {"service": "ratings", "peer": REVIEWS, "xfcc": None}
    assert whoami(f"http://127.0.0.1:{ratings.port}") is not None


def test_permissive_in_every_worker(pki: Pki, serve: Callable[..., list[Service]]) -> None:
    (ratings,) = serve(service(pki, "ratings", "--workers", "2"))
    https, http = f"https://127.0.0.1:{ratings.port}", f"http://127.0.0.1:{ratings.port}"
    assert wait_until(lambda: whoami(https, pki.client("reviews")) is not None, timeout=30)
    for _ in range(10):  # new connections, spread over the workers by the kernel
        assert whoami(https, pki.client("reviews")) == {
            "service": "ratings",
            "peer": REVIEWS,
            "xfcc": None,
        }
        assert whoami(http) == {"service": "ratings", "peer": None, "xfcc": None}
