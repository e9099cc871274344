"""The built-in CA: files and modes, the certificates it issues, its command line."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshware.cli.main import cli
from meshware.security.ca import CAError, CertificateAuthority, key_pem, new_key
from meshware.security.identity import SpiffeId, spiffe_ids_of


def test_init_writes_a_root_and_an_intermediate_with_private_keys_0600(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", trust_domain="example.org")
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ca").iterdir()}
    assert files["root-key.pem"] == files["ca-key.pem"] == 0o600
    assert {"root-cert.pem", "ca-cert.pem", "ca.json"} <= set(files)
    assert ca.trust_domain == "example.org"
    root = x509.load_pem_x509_certificate((tmp_path / "ca" / "root-cert.pem").read_bytes())
    intermediate = ca.intermediate
    assert intermediate.issuer == root.subject
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    with pytest.raises(CAError, match="already holds a CA"):
        CertificateAuthority.init(tmp_path / "ca")


def test_issued_certificates_are_short_lived_svids(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    credentials = ca.issue("reviews", "shop", ttl=dt.timedelta(hours=2))
    assert credentials.spiffe_id == SpiffeId("cluster.local", "shop", "reviews")
    leaf, intermediate = x509.load_pem_x509_certificates(credentials.cert_pem)
    assert spiffe_ids_of(leaf) == ["spiffe://cluster.local/ns/shop/sa/reviews"]
    assert intermediate == ca.intermediate
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=59) < lifetime <= dt.timedelta(hours=2)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the chain verifies against the bundle, as OpenSSL will check it in a handshake
    context = ssl.create_default_context(cadata=credentials.bundle_pem.decode())
    assert context.get_ca_certs()
    leaf.verify_directly_issued_by(intermediate)


def test_an_operators_root_signs_the_intermediate_and_its_key_stays_theirs(
    tmp_path: Path,
) -> None:
    own = CertificateAuthority.init(tmp_path / "theirs")
    root_cert = (tmp_path / "theirs" / "root-cert.pem").read_bytes()
    root_key = (tmp_path / "theirs" / "root-key.pem").read_bytes()
    ca = CertificateAuthority.init(tmp_path / "ca", root_cert=root_cert, root_key=root_key)
    assert not (tmp_path / "ca" / "root-key.pem").exists()
    assert ca.bundle_pem == root_cert
    assert ca.intermediate.issuer == own.intermediate.issuer
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.init(
            tmp_path / "bad", root_cert=root_cert, root_key=key_pem(new_key())
        )


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        CertificateAuthority.init(tmp_path / "ca", trust_domain="Not A Domain")
    ca = CertificateAuthority.init(tmp_path / "ca2")
    with pytest.raises(ValueError, match="service"):
        ca.issue("Bad_Name")
    with pytest.raises(CAError, match="not a CA directory"):
        CertificateAuthority.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="workload SPIFFE ID"):
        SpiffeId.parse("spiffe://cluster.local/ns/default/sa/reviews/extra")
    with pytest.raises(ValueError, match="not a SPIFFE ID"):
        SpiffeId.parse("https://cluster.local/ns/default/sa/reviews")


def test_ca_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["ca", "init", "--dir", str(tmp_path / "ca")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        ["ca", "issue", "--dir", str(tmp_path / "ca"), "--service", "ratings",
         "--ttl", "10m", "--out", str(tmp_path / "ratings")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "spiffe://cluster.local/ns/default/sa/ratings" in result.output
    key = tmp_path / "ratings" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificates((tmp_path / "ratings" / "cert.pem").read_bytes())[0]
    assert leaf.signature_hash_algorithm is not None
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    bad = runner.invoke(
        cli,
        ["ca", "issue", "--dir", str(tmp_path / "ca"), "--service", "x", "--ttl", "forever",
         "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert bad.exit_code != 0 and "duration" in bad.output
