"""Mutual TLS with real handshakes: services under ``meshware serve --cert-dir`` (STRICT),
the mesh client presenting its workload certificate and checking the server's identity, and
an attack suite in which every attempt is refused and nothing breaks."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from meshware import Mesh
from meshware.demo.services import Service
from meshware.security.ca import CertificateAuthority, write_credentials
from tests.helpers import wait_until
from tests.transport.conftest import wait_for_endpoints

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"


class Pki:
    """A CA in ``tmp_path`` and workload credentials written where services read them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.init(root / "ca")

    def workload(self, name: str, service: str, **issue: object) -> Path:
        directory = self.root / name
        write_credentials(directory, self.ca.issue(service, **issue))  # type: ignore[arg-type]
        return directory


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def tls_service(service: str, cert_dir: Path, app: str = "tests.tls_app:app") -> Service:
    # STRICT explicitly: with no PeerAuthentication the default would be PERMISSIVE
    return Service(service, "v1", app=app, args=("--cert-dir", str(cert_dir), "--mtls", "strict"))


def client_context(credentials_dir: Path | None, bundle: Path) -> ssl.SSLContext:
    """A TLS client as an attacker or a tool would build it (identity checked by hand)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(bundle))
    if credentials_dir is not None:
        context.load_cert_chain(credentials_dir / "cert.pem", credentials_dir / "key.pem")
    return context


def get(url: str, context: ssl.SSLContext, **headers: str) -> httpx.Response:
    with httpx.Client(verify=context, timeout=5) as client:
        return client.get(url, headers=headers)


def test_every_hop_is_mutual_tls_and_the_callee_sees_the_callers_identity(
    pki: Pki, serve: Callable[..., list[Service]]
) -> None:
    ratings_dir = pki.workload("ratings", "ratings")
    reviews_dir = pki.workload("reviews", "reviews")
    ratings, reviews = serve(
        tls_service("ratings", ratings_dir), tls_service("reviews", reviews_dir)
    )
    bundle = reviews_dir / "bundle.pem"
    as_reviews = client_context(reviews_dir, bundle)

    # reviews calls ratings through its mesh client: auto-mTLS (ratings advertises STRICT)
    def call() -> dict[str, object]:
        try:
            body = get(f"https://127.0.0.1:{reviews.port}/call/ratings", as_reviews).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body  # type: ignore[no-any-return]

    assert wait_until(lambda: call().get("status") == 200, timeout=20), call()
    answer = call()["body"]
    assert answer == {"service": "ratings", "peer": REVIEWS, "xfcc": None}  # type: ignore[comparison-overlap]

    # a plaintext request to a STRICT service gets nowhere
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{ratings.port}/whoami", timeout=5)


def test_attacks_are_refused_and_nothing_breaks(
    pki: Pki, serve: Callable[..., list[Service]], tmp_path: Path
) -> None:
    ratings_dir = pki.workload("ratings", "ratings")
    reviews_dir = pki.workload("reviews", "reviews")
    bundle = ratings_dir / "bundle.pem"
    now = dt.datetime.now(dt.UTC)
    expired = pki.workload(
        "expired", "reviews", ttl=dt.timedelta(hours=1), not_before=now - dt.timedelta(hours=2)
    )
    early = pki.workload(
        "early", "reviews", ttl=dt.timedelta(hours=1), not_before=now + dt.timedelta(hours=1)
    )
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    write_credentials(tmp_path / "intruder", foreign.issue("reviews"))
    (ratings,) = serve(tls_service("ratings", ratings_dir))
    url = f"https://127.0.0.1:{ratings.port}"
    as_reviews = client_context(reviews_dir, bundle)
    assert wait_until(lambda: _ok(f"{url}/whoami", as_reviews), timeout=20)
    before = get(f"{url}/seen", as_reviews).json()["seen"]

    attempts = {
        "no client certificate": client_context(None, bundle),
        "a certificate from a foreign CA": client_context(tmp_path / "intruder", bundle),
        "an expired certificate": client_context(expired, bundle),
        "a certificate not yet valid": client_context(early, bundle),
    }
    refused = []
    for name, context in attempts.items():
        try:
            get(f"{url}/whoami", context)
        except httpx.TransportError:
            refused.append(name)
    assert refused == list(attempts)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{ratings.port}/whoami", timeout=5)  # plaintext
    # none of them reached the application; the server still serves
    assert get(f"{url}/seen", as_reviews).json()["seen"] == before

    # forged identity headers: ignored, and the app never sees them
    forged = get(
        f"{url}/whoami",
        as_reviews,
        **{"x-forwarded-client-cert": "By=spiffe://cluster.local/ns/default/sa/admin;URI=x"},
    ).json()
    assert forged == {"service": "ratings", "peer": REVIEWS, "xfcc": None}


def test_the_client_refuses_a_server_with_the_wrong_identity_before_sending(
    pki: Pki, serve: Callable[..., list[Service]], make_mesh: Callable[..., Mesh]
) -> None:
    """An instance registered as ratings but holding details' certificate never gets the
    request: the handshake succeeds (same CA), the identity check fails, nothing is written."""
    impostor_dir = pki.workload("details", "details")
    (impostor,) = serve(tls_service("ratings", impostor_dir))
    caller = make_mesh(
        "reviews", cert_dir=pki.workload("reviews", "reviews"), discovery_interval=0.2
    ).start()
    wait_for_endpoints(caller, "ratings", 1)
    with caller.client(timeout=5) as client, pytest.raises(httpx.ConnectError) as failure:
        client.get("http://ratings/whoami")
    assert f"expected {RATINGS}" in str(failure.value)
    assert "sa/details" in str(failure.value)
    as_details = client_context(impostor_dir, impostor_dir / "bundle.pem")
    assert get(f"https://127.0.0.1:{impostor.port}/seen", as_details).json()["seen"] == 0


def test_a_wsgi_app_sees_the_verified_peer(pki: Pki, serve: Callable[..., list[Service]]) -> None:
    ratings_dir = pki.workload("ratings", "ratings")
    (ratings,) = serve(tls_service("ratings", ratings_dir, app="tests.tls_app:wsgi"))
    as_reviews = client_context(pki.workload("reviews", "reviews"), ratings_dir / "bundle.pem")
    url = f"https://127.0.0.1:{ratings.port}/whoami"
    assert wait_until(lambda: _ok(url, as_reviews), timeout=20)
    body = get(url, as_reviews, **{"x-forwarded-client-cert": "forged"}).json()
    assert body == {"service": "ratings", "peer": REVIEWS, "xfcc": None}


def _ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        return get(url, context).status_code == 200
    except httpx.HTTPError:
        return False
