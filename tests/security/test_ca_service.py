"""The CA signing service, attacked over real HTTP and real TLS: ``meshware ca serve`` runs as
a child process on 127.0.0.1 and workloads enroll with join tokens and renew with their
certificates, as :mod:`meshware.security.enroll` does, or send hand-made requests."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshware import Mesh
from meshware.config.keys import Keys
from meshware.demo.services import Service
from meshware.embedded_redis import RedisServer, free_port
from meshware.security.bundle_hint import bundle_digest
from meshware.security.ca import (
    CertificateAuthority,
    Credentials,
    load_pem_certificates,
    write_credentials,
)
from meshware.security.enroll import CAClient, EnrollmentError, workload_renewer
from meshware.security.identity import spiffe_ids_of
from meshware.security.rotation import rotate
from meshware.security.tokens import decode_token
from tests.ca_server import CAServer
from tests.helpers import ROOT, wait_until

RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(directory=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[CAServer]:
    """One CA service for the module; each test mints its own tokens."""
    root = tmp_path_factory.mktemp("pki")
    CertificateAuthority.init(root / "ca")
    server = CAServer(root / "ca", root / "ca-serve.log", ttl="1h", redis_url=redis_url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(ca: CAServer, directory: Path, service: str, token: str | None, **kw: Any) -> CAClient:
    return CAClient(ca.url, directory, service=service, join_token=token, **kw)


def leaf_of(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((directory / "cert.pem").read_bytes())[0]


def make_csr(key: ec.EllipticCurvePrivateKey, name: str, san: str | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def context(ca: CAServer, credentials: Path | None = None) -> ssl.SSLContext:
    """A hand-made TLS client trusting the CA's bundle (and presenting ``credentials``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.authority.bundle_pem.decode())
    if credentials is not None:
        ctx.load_cert_chain(credentials / "cert.pem", credentials / "key.pem")
    return ctx


def post(
    ca: CAServer,
    body: bytes | dict[str, Any],
    *,
    token: str | None = None,
    credentials: Path | None = None,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(verify=context(ca, credentials), timeout=10) as http:
        return http.post(f"{ca.url}/v1/certificates", content=content, headers=headers)


def test_first_issue_sends_only_a_csr_and_writes_credentials_0600(
    ca: CAServer, tmp_path: Path
) -> None:
    sent: list[bytes] = []

    def record(request: httpx.Request) -> None:
        sent.append(request.read())

    directory = tmp_path / "ratings"
    issued = client(
        ca, directory, "ratings", ca.token("ratings"), event_hooks={"request": [record]}
    ).enroll()
    assert str(issued.identity) == RATINGS
    leaf = leaf_of(directory)
    assert spiffe_ids_of(leaf) == [RATINGS]
    assert leaf.serial_number == issued.serial
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    assert (directory / "bundle.pem").read_bytes() == ca.authority.bundle_pem
    key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
    assert key.public_key() == leaf.public_key()

    # the private key never left: the one request carried exactly a CSR for that key
    (body,) = sent
    assert set(json.loads(body)) == {"csr"}
    csr = x509.load_pem_x509_csr(json.loads(body)["csr"].encode())
    assert csr.public_key() == key.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert b"PRIVATE KEY" not in body
    assert secret not in body and secret.hex().encode() not in body
    assert der not in body

    # a server refuses a body carrying anything more than the CSR
    refused = post(ca, {"csr": json.loads(body)["csr"], "key": "..."}, token=ca.token("ratings"))
    assert refused.status_code == 400 and refused.json()["error"] == "bad_request"


def test_an_expired_join_token_is_refused(ca: CAServer, tmp_path: Path) -> None:
    expired = ca.token("ratings", ttl=3600, now=time.time() - 7200)
    with pytest.raises(EnrollmentError, match="expired") as refused:
        client(ca, tmp_path / "w", "ratings", expired).enroll()
    assert refused.value.status == 401
    assert not (tmp_path / "w" / "cert.pem").exists()
    answer = post(ca, {"csr": make_csr(ec.generate_private_key(ec.SECP256R1()), "r").decode()},
                  token=expired)  # fmt: skip
    assert answer.status_code == 401
    assert answer.json()["reason"] == "expired"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "expired" in ca.log()  # refusals are logged


def test_a_reused_join_token_is_refused_even_after_a_restart(ca: CAServer, tmp_path: Path) -> None:
    token = ca.token("ratings")
    client(ca, tmp_path / "first", "ratings", token).enroll()
    with pytest.raises(EnrollmentError, match="already used") as refused:
        client(ca, tmp_path / "second", "ratings", token).enroll()
    assert refused.value.status == 401
    ca.restart()
    with pytest.raises(EnrollmentError, match="already used"):
        client(ca, tmp_path / "third", "ratings", token).enroll()
    assert not (tmp_path / "second" / "cert.pem").exists()
    assert not (tmp_path / "third" / "cert.pem").exists()


def test_a_token_for_one_service_cannot_obtain_another(ca: CAServer, tmp_path: Path) -> None:
    # the workload library refuses to use someone else's token at all
    with pytest.raises(EnrollmentError, match=r"the join token is for .*sa/ratings"):
        client(ca, tmp_path / "w", "reviews", ca.token("ratings")).enroll()
    # a CSR asking for reviews, paid with a ratings token: the certificate says ratings
    key = ec.generate_private_key(ec.SECP256R1())
    answer = post(
        ca, {"csr": make_csr(key, "reviews", REVIEWS).decode()}, token=ca.token("ratings")
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["spiffe_id"] == RATINGS
    leaf = x509.load_pem_x509_certificates(answer.json()["certificate_chain"].encode())[0]
    assert spiffe_ids_of(leaf) == [RATINGS]
    # nor can a token be edited to name another service
    prefix, payload, mac = ca.token("ratings").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = REVIEWS
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    answer = post(ca, {"csr": make_csr(key, "reviews").decode()},
                  token=f"{prefix}.{forged_payload}.{mac}")  # fmt: skip
    assert answer.status_code == 401 and answer.json()["reason"] == "bad signature"
    # nor the CA's own identity
    assert client(ca, tmp_path / "own", "ratings", ca.token("ratings")).enroll()
    own = post(ca, {"csr": make_csr(key, "x").decode()},
               token=ca.token("meshware-ca", namespace="meshware-system"))  # fmt: skip
    assert own.status_code == 403 and own.json()["reason"] == "reserved identity"


def test_a_csr_with_a_bad_signature_is_refused_and_does_not_spend_the_token(
    ca: CAServer,
) -> None:
    token = ca.token("ratings")
    key = ec.generate_private_key(ec.SECP256R1())
    good = make_csr(key, "ratings")
    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    bad = x509.load_der_x509_csr(bytes(der))
    assert not bad.is_signature_valid
    answer = post(ca, {"csr": bad.public_bytes(serialization.Encoding.PEM).decode()}, token=token)
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_csr" and "signature" in answer.json()["message"]
    for garbage in ("", "not a csr", good.decode().replace("A", "B", 5)):
        answer = post(ca, {"csr": garbage}, token=token)
        assert answer.status_code == 400, answer.text
    # a request refused for its CSR did not spend the token
    fine = post(ca, {"csr": good.decode()}, token=token)
    assert fine.status_code == 200, fine.text


def test_renewal_without_a_client_certificate_is_refused(ca: CAServer) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "ratings").decode()
    answer = post(ca, {"csr": csr})
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated"
    assert "Traceback" not in answer.text


def test_renewal_with_a_foreign_certificate_is_refused(ca: CAServer, tmp_path: Path) -> None:
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    issued = foreign.issue("ratings")  # kept with the real bundle: it trusts the real CA
    write_credentials(
        tmp_path / "intruder", Credentials(issued.cert_pem, issued.key_pem, ca.authority.bundle_pem)
    )
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "ratings").decode()
    # the handshake fails: the server verifies a presented certificate against its bundle
    with pytest.raises(httpx.TransportError):
        post(ca, {"csr": csr}, credentials=tmp_path / "intruder")
    # the same through the workload library
    renewal = CAClient(ca.url, tmp_path / "intruder", service="ratings")
    with pytest.raises(EnrollmentError, match="cannot reach"):
        renewal.renew()
    # an expired certificate of our own CA is no better
    past = time.time() - 7200
    write_credentials(
        tmp_path / "expired",
        ca.authority.issue(
            "ratings",
            ttl=dt.timedelta(hours=1),
            not_before=dt.datetime.fromtimestamp(past, dt.UTC),
        ),
    )
    with pytest.raises(httpx.TransportError):
        post(ca, {"csr": csr}, credentials=tmp_path / "expired")


def test_renewal_keeps_the_identity_and_changes_the_key(ca: CAServer, tmp_path: Path) -> None:
    directory = tmp_path / "ratings"
    workload = client(ca, directory, "ratings", ca.token("ratings"))
    first = workload.enroll()
    key_before = (directory / "key.pem").read_bytes()
    second = workload.renew()
    assert second.identity == first.identity and second.serial != first.serial
    assert (directory / "key.pem").read_bytes() != key_before
    assert spiffe_ids_of(leaf_of(directory)) == [RATINGS]
    # a renewal CSR asking for another identity still gets its own
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, "admin", "spiffe://cluster.local/ns/default/sa/admin").decode()
    answer = post(ca, {"csr": csr}, credentials=directory)
    assert answer.status_code == 200, answer.text
    assert answer.json()["spiffe_id"] == RATINGS


def test_bad_requests_get_clear_json_errors(ca: CAServer) -> None:
    token = ca.token("ratings")
    for body, status in (
        (b"{", 400),
        (b"[]", 400),
        (b'{"csr": 1}', 400),
        (b"x" * (70 * 1024), 413),
    ):
        answer = post(ca, body, token=token)
        assert answer.status_code == status, answer.text
        assert set(answer.json()) == {"error", "reason", "message"}
    with httpx.Client(verify=context(ca), timeout=10) as http:
        answer = http.post(
            f"{ca.url}/v1/certificates", json={"csr": "x"}, headers={"authorization": "Basic x"}
        )
        assert answer.status_code == 401 and answer.json()["reason"] == "malformed"
        assert http.get(f"{ca.url}/v1/certificates").status_code == 405
        bundle = http.get(f"{ca.url}/v1/bundle")
        assert bundle.status_code == 200 and bundle.content == ca.authority.bundle_pem


class Impostor:
    """An HTTPS server with a *workload* certificate from the real CA, answering the real
    bundle and recording whether anyone posted to it (it would get the join token)."""

    def __init__(self, credentials: Path, bundle: bytes) -> None:
        self.posts = 0

        async def bundle_route(request: Request) -> Response:
            return Response(bundle)

        async def certificates(request: Request) -> Response:
            self.posts += 1
            return Response("{}", status_code=500)

        app = Starlette(
            routes=[
                Route("/v1/bundle", bundle_route),
                Route("/v1/certificates", certificates, methods=["POST"]),
            ]
        )
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                ssl_certfile=str(credentials / "cert.pem"),
                ssl_keyfile=str(credentials / "key.pem"),
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.server.started, timeout=10)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def test_the_token_is_never_sent_to_an_impostor(ca: CAServer, tmp_path: Path) -> None:
    # a workload of the same CA pretending to be the CA service: the chain verifies against
    # the pinned root, the SPIFFE ID does not, and nothing is posted
    write_credentials(tmp_path / "ratings", ca.authority.issue("ratings"))
    impostor = Impostor(tmp_path / "ratings", ca.authority.bundle_pem)
    try:
        fake = CAClient(f"https://127.0.0.1:{impostor.port}", tmp_path / "w", service="reviews",
                        join_token=ca.token("reviews"))  # fmt: skip
        with pytest.raises(EnrollmentError, match="not the CA service"):
            fake.enroll()
        assert impostor.posts == 0
    finally:
        impostor.close()
    # another CA altogether: its bundle holds none of the roots the token pins
    other = CertificateAuthority.init(tmp_path / "other")
    write_credentials(tmp_path / "other-ca", other.issue("meshware-ca", "meshware-system"))
    impostor = Impostor(tmp_path / "other-ca", other.bundle_pem)
    try:
        fake = CAClient(f"https://127.0.0.1:{impostor.port}", tmp_path / "w", service="reviews",
                        join_token=ca.token("reviews"))  # fmt: skip
        with pytest.raises(EnrollmentError, match="none of the roots the join token pins"):
            fake.enroll()
        assert impostor.posts == 0
    finally:
        impostor.close()


def test_no_private_key_reaches_redis(ca: CAServer, redis_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "ratings"
    client(ca, directory, "ratings", ca.token("ratings")).enroll()
    keys = Keys("default")
    db = redis.Redis.from_url(redis_url)
    try:
        assert wait_until(lambda: db.get(keys.trust_bundle) is not None, timeout=10)
        assert db.get(keys.trust_bundle) == ca.authority.bundle_pem
        secrets = [
            path.read_bytes()
            for path in [
                *ca.directory.glob("*key*"),
                *ca.directory.glob("serving/key.pem"),
                directory / "key.pem",
            ]
            if path.is_file()
        ]
        assert len(secrets) >= 4  # root, intermediate, token key, serving key, workload key
        bodies = [b"".join(s.split(b"\n")[1:-2]) for s in secrets]
        values: list[bytes] = []
        for name in db.scan_iter("*"):
            kind = db.type(name)
            if kind == b"string":
                values.append(db.get(name) or b"")
            elif kind == b"hash":
                values.extend(k + b"=" + v for k, v in db.hgetall(name).items())
            elif kind == b"list":
                values.extend(db.lrange(name, 0, -1))
            elif kind == b"set":
                values.extend(db.smembers(name))
            elif kind == b"zset":
                values.extend(m for m, _ in db.zrange(name, 0, -1, withscores=True))
        assert values
        for value in values:
            assert b"PRIVATE KEY" not in value
            for secret, body in zip(secrets, bodies, strict=True):
                assert secret.strip() not in value
                assert not body or body not in value.replace(b"\n", b"")
    finally:
        db.close()


def test_ca_directory_secrets_are_0600(ca: CAServer) -> None:
    for name in ("root-key.pem", "ca-key.pem", "token-key", "used-tokens.json", "serving/key.pem"):
        assert stat.S_IMODE((ca.directory / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((ca.directory / "serving").stat().st_mode) == 0o700


def test_a_restarted_mesh_renews_instead_of_spending_the_token_again(
    ca: CAServer, tmp_path: Path
) -> None:
    directory = tmp_path / "reviews"
    token = ca.token("reviews")
    mesh = Mesh("reviews", ca_url=ca.url, join_token=token, cert_dir=directory)
    mesh.start(wait=0)
    try:
        assert mesh.tls is not None and mesh.tls.identity.uri == REVIEWS
        first = mesh.tls.serial
    finally:
        mesh.stop()
    again = Mesh("reviews", ca_url=ca.url, join_token=token, cert_dir=directory)
    again.start(wait=0)  # the token is spent: this works only by renewing
    try:
        assert again.tls is not None and again.tls.serial != first
        assert again.renewer is not None and again.renewer.last_error == ""
    finally:
        again.stop()
    # without valid credentials in the directory, the spent token is refused
    with pytest.raises(EnrollmentError, match="already used"):
        Mesh("reviews", ca_url=ca.url, join_token=token, cert_dir=tmp_path / "new").start()
    # a CA outage does not stop a restart while the certificate is valid: it is kept, and
    # renewal is retried in the background
    away = Mesh("reviews", ca_url=f"https://127.0.0.1:{free_port()}", cert_dir=directory)
    away.start(wait=0)
    try:
        assert away.tls is not None and away.tls.identity.uri == REVIEWS
        assert away.renewer is not None and "cannot reach" in away.renewer.last_error
    finally:
        away.stop()
    # ... but with nothing valid to fall back on, it is an error
    with pytest.raises(EnrollmentError, match="cannot reach"):
        Mesh("reviews", ca_url=f"https://127.0.0.1:{free_port()}", join_token=token,
             cert_dir=tmp_path / "empty").start()  # fmt: skip


def serve_command(ca_url: str, token: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshware", "serve", "tests.tls_app:app", "--service", "ratings",
         "--port", str(port), "--ca-url", ca_url],
        cwd=ROOT,
        env={**_env(), "MESHWARE_JOIN_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MESHWARE_")}


def test_meshware_serve_exits_1_when_the_ca_refuses_or_is_unreachable(ca: CAServer) -> None:
    token = ca.token("ratings", ttl=3600, now=time.time() - 7200)
    refused = serve_command(ca.url, token, free_port())
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "expired" in refused.stderr and "Traceback" not in refused.stderr
    unreachable = serve_command(
        f"https://127.0.0.1:{free_port()}", ca.token("ratings"), free_port()
    )
    assert unreachable.returncode == 1
    assert "cannot reach the CA" in unreachable.stderr


def test_a_bundle_hint_in_redis_renews_early_but_trust_comes_from_the_ca(
    tmp_path: Path, redis_url: str
) -> None:
    CertificateAuthority.init(tmp_path / "ca")
    ca = CAServer(tmp_path / "ca", tmp_path / "ca.log", ttl="1h", redis_url=redis_url).start()
    keys = Keys("default")
    db = redis.Redis.from_url(redis_url)
    renewer = workload_renewer(
        ca_url=ca.url,
        service="ratings",
        join_token=ca.token("ratings"),
        cert_dir=tmp_path / "ratings",
        redis_url=redis_url,
    )
    try:
        renewer.start()
        bundle = tmp_path / "ratings" / "bundle.pem"
        assert renewer.due - time.time() > 1000  # next scheduled renewal: in about 30 min
        rotate(ca.directory, "add")
        # the CA publishes the new bundle; the workload renews at once and gets it from the CA
        assert wait_until(lambda: renewer.renewals >= 1, timeout=20), ca.log()
        assert wait_until(lambda: len(load_pem_certificates(bundle.read_bytes())) == 2, timeout=5)
        assert bundle.read_bytes() == ca.authority.bundle_pem
        # a bundle forged in Redis is no more than a reason to ask the CA again
        foreign = CertificateAuthority.init(tmp_path / "foreign")
        db.set(keys.trust_bundle, foreign.bundle_pem)
        db.publish(keys.trust_bundle_events, bundle_digest(foreign.bundle_pem))
        assert wait_until(lambda: renewer.renewals >= 2, timeout=20)
        assert bundle.read_bytes() == ca.authority.bundle_pem
        assert renewer.last_error == ""
        # and the CA puts its own bundle back
        assert wait_until(lambda: db.get(keys.trust_bundle) == ca.authority.bundle_pem, timeout=20)
    finally:
        renewer.stop()
        db.close()
        ca.stop()


def test_serve_with_workers_spends_the_token_once(
    ca: CAServer, serve: Callable[..., list[Service]], tmp_path: Path
) -> None:
    token = ca.token("details")
    (details,) = serve(
        Service("details", "v1", app="tests.tls_app:app",
                args=("--ca-url", ca.url, "--workers", "2", "--mtls", "strict",
                      "--cert-dir", str(tmp_path / "details"), "--join-token", token))
    )  # fmt: skip
    assert spiffe_ids_of(leaf_of(tmp_path / "details")) == [
        "spiffe://cluster.local/ns/default/sa/details"
    ]
    write_credentials(tmp_path / "caller", ca.authority.issue("reviews"))
    url = f"https://127.0.0.1:{details.port}/whoami"
    with httpx.Client(verify=context(ca, tmp_path / "caller"), timeout=10) as http:
        assert wait_until(lambda: _answers(http, url), timeout=30)
        assert http.get(url).json()["peer"] == REVIEWS
    token_id = decode_token(token).token_id
    assert ca.log().count(f"(join token {token_id})") == 1


def _answers(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(url).status_code == 200
    except httpx.HTTPError:
        return False
