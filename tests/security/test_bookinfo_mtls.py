"""Bookinfo under STRICT mutual TLS: every service under ``meshware serve --cert-dir``.

Every hop is mutual TLS (each service accepts nothing else), ratings sees the caller identity
``spiffe://cluster.local/ns/default/sa/reviews``, a plaintext request to a STRICT service
fails, and after the run no private key is anywhere in Redis.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from meshware.demo.services import BOOKINFO, Service
from meshware.security.ca import CertificateAuthority, write_credentials
from tests.helpers import BOOKINFO as MANIFESTS
from tests.helpers import wait_until


def test_bookinfo_under_strict_mtls(
    redis_url: str,
    tmp_path: Path,
    apply_yaml: Callable[[str], int],
    serve: Callable[..., list[Service]],
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    services = []
    for spec in BOOKINFO:
        cert_dir = tmp_path / "certs" / f"{spec.service}-{spec.version}"
        write_credentials(cert_dir, ca.issue(spec.service))
        strict = ("--cert-dir", str(cert_dir), "--mtls", "strict")  # default: PERMISSIVE
        services.append(Service(spec.service, spec.version, args=strict))
    # the test client is a workload too: an ingress with its own identity
    write_credentials(tmp_path / "certs" / "ingress", ca.issue("ingress"))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cafile=str(tmp_path / "certs" / "ingress" / "bundle.pem"))
    client.load_cert_chain(
        tmp_path / "certs" / "ingress" / "cert.pem", tmp_path / "certs" / "ingress" / "key.pem"
    )
    placed = serve(*services)
    apply_yaml(
        (MANIFESTS / "destination-rule-all.yaml").read_text()
        + "\n---\n"
        + (MANIFESTS / "virtual-service-reviews-jason-v2-v3.yaml").read_text()
    )
    productpage = next(s for s in placed if s.service == "productpage")
    url = f"https://127.0.0.1:{productpage.port}/productpage"

    def page() -> dict[str, object]:
        try:
            with httpx.Client(verify=client, timeout=10) as http:
                response = http.get(url, headers={"end-user": "jason"})
            return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return {}

    def served() -> object:
        reviews = page().get("reviews")
        return reviews.get("served_by") if isinstance(reviews, dict) else None

    assert wait_until(lambda: served() == "reviews-v2", timeout=30)
    body = page()
    reviews, details = body["reviews"], body["details"]
    assert isinstance(reviews, dict) and isinstance(details, dict)
    assert details["served_by"] == "details-v1"  # productpage → details over mTLS
    assert reviews["ratings_saw"]["caller"] == "spiffe://cluster.local/ns/default/sa/reviews"
    assert {r["rating"]["color"] for r in reviews["reviews"]} == {"black"}

    # every service accepts nothing but mutual TLS
    for service in placed:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{service.port}/", timeout=5)

    # no private key ever reached the control plane
    client_redis = redis.Redis.from_url(redis_url)
    try:
        for key in client_redis.scan_iter(count=1000):
            kind = client_redis.type(key)
            if kind == b"string":
                values = [client_redis.get(key) or b""]
            elif kind == b"hash":
                values = list(client_redis.hgetall(key).values())
            elif kind == b"list":
                values = client_redis.lrange(key, 0, -1)
            elif kind == b"zset":
                values = [m for m, _ in client_redis.zrange(key, 0, -1, withscores=True)]
            elif kind == b"set":
                values = list(client_redis.smembers(key))
            else:
                values = []
            for value in values:
                assert b"PRIVATE KEY" not in value, key
    finally:
        client_redis.close()
