"""The built-in certificate authority: a root, a signing intermediate, workload certificates.

Layout of a CA directory (``meshware ca init --dir DIR``)::

    ca.json          trust domain and file names
    root-cert.pem    the root certificate(s) workloads trust: the trust bundle
    root-key.pem     the root key (0600), only when meshware generated the root
    ca-cert.pem      the signing intermediate, issued by a root of the bundle
    ca-key.pem       its key (0600)

(The signing service, join tokens and root rotation add files of their own: see
:mod:`meshware.security.ca_service`, :mod:`meshware.security.tokens` and
:mod:`meshware.security.rotation`.)

Workload certificates (X.509-SVIDs) carry exactly one URI SAN, the workload's SPIFFE ID, are
valid for both TLS client and server authentication, and are short-lived (24 h by default).
Keys are ECDSA P-256: fast handshakes, small certificates. Every key file is created with mode
0600 and every file is written atomically (a reader never sees half a certificate).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshware.errors import MeshwareError
from meshware.security.identity import SpiffeId

__all__ = [
    "CA_SERVICE_ACCOUNT",
    "CA_SERVICE_NAMESPACE",
    "DEFAULT_TRUST_DOMAIN",
    "CAError",
    "CSRError",
    "CertificateAuthority",
    "Credentials",
    "Hierarchy",
    "certificates_pem",
    "check_issued_by",
    "csr_public_key",
    "fingerprint",
    "load_pem_certificates",
    "make_hierarchy",
    "write_credentials",
    "write_private",
]

DEFAULT_TRUST_DOMAIN = "cluster.local"
CA_SERVICE_NAMESPACE = "meshware-system"
CA_SERVICE_ACCOUNT = "meshware-ca"
"""The signing service's own identity: ``spiffe://<td>/ns/meshware-system/sa/meshware-ca``."""
ROOT_TTL = dt.timedelta(days=3650)
INTERMEDIATE_TTL = dt.timedelta(days=365)
WORKLOAD_TTL = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this long before "now", so a peer whose clock is a little behind accepts them."""

PrivateKey = ec.EllipticCurvePrivateKey


class CAError(MeshwareError):
    """The CA directory is missing, incomplete or unreadable, or a request to it is invalid."""


class CSRError(CAError):
    """A certificate signing request is malformed, badly signed or has an unsupported key."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a workload needs for mutual TLS: its chain, its key and the roots it trusts."""

    cert_pem: bytes
    """The workload certificate followed by the intermediate that signed it."""
    key_pem: bytes
    bundle_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def spiffe_id(self) -> SpiffeId:
        from meshware.security.identity import spiffe_ids_of

        ids = spiffe_ids_of(self.certificate)
        if len(ids) != 1:
            raise CAError(f"a workload certificate must carry one SPIFFE ID, found {ids}")
        return SpiffeId.parse(ids[0])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CAError(f"not a PEM certificate file: {exc}") from None


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, in hex (what a join token pins)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificates_pem(certificates: list[x509.Certificate]) -> bytes:
    """Certificates re-encoded as PEM: whatever else the input held (keys, comments) is gone."""
    return b"".join(cert_pem(c) for c in certificates)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (a private key) readable by its owner only (0600)."""
    _atomic_write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o644)


def write_credentials(directory: Path, credentials: Credentials) -> None:
    """``cert.pem``, ``key.pem`` (0600) and ``bundle.pem`` in ``directory``."""
    write_private(directory / "key.pem", credentials.key_pem)
    write_public(directory / "cert.pem", credentials.cert_pem)
    write_public(directory / "bundle.pem", credentials.bundle_pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshware"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a workload signs handshakes and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    signing_key: PrivateKey,
    ttl: dt.timedelta,
    *,
    path_length: int | None,
    issuer_public_key: ec.EllipticCurvePublicKey,
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False
        )
        .sign(signing_key, hashes.SHA256())
    )


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """A root and the signing intermediate it issued, as PEM (``root_key_pem`` is None when
    the root is the operator's: its key is never kept)."""

    root_cert_pem: bytes
    root_key_pem: bytes | None
    intermediate_cert_pem: bytes
    intermediate_key_pem: bytes

    def write(self, directory: Path) -> None:
        """The four files of a CA directory (keys 0600), bundle = this root only."""
        if self.root_key_pem is not None:
            write_private(directory / "root-key.pem", self.root_key_pem)
        write_public(directory / "root-cert.pem", self.root_cert_pem)
        write_private(directory / "ca-key.pem", self.intermediate_key_pem)
        write_public(directory / "ca-cert.pem", self.intermediate_cert_pem)


def make_hierarchy(
    trust_domain: str, *, root_cert: bytes | None = None, root_key: bytes | None = None
) -> Hierarchy:
    """A new root (or the operator's ``root_cert``/``root_key``) and a new intermediate.

    Every CA gets a name with a random tag, so the old and the new root of a rotation (and
    their intermediates) never share a subject name in one trust bundle.
    """
    if (root_cert is None) != (root_key is None):
        raise CAError("--root-cert and --root-key go together")
    tag = secrets.token_hex(4)
    if root_cert is not None and root_key is not None:
        root = load_pem_certificates(root_cert)[0]
        try:
            loaded = serialization.load_pem_private_key(root_key, password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"the operator's root key does not load: {exc}") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise CAError("the operator's root key must be an EC key (P-256 or P-384)")
        root_signing_key = loaded
        if root.public_key() != loaded.public_key():
            raise CAError("the root key does not belong to the root certificate")
        own_root_key: bytes | None = None
    else:
        root_signing_key = new_key()
        name = _name(f"meshware root CA ({trust_domain}, {tag})")
        root = _ca_certificate(
            name,
            root_signing_key.public_key(),
            name,
            root_signing_key,
            ROOT_TTL,
            path_length=1,
            issuer_public_key=root_signing_key.public_key(),
        )
        own_root_key = key_pem(root_signing_key)
    root_public = root.public_key()
    if not isinstance(root_public, ec.EllipticCurvePublicKey):
        raise CAError("the root certificate must have an EC key")
    intermediate_key = new_key()
    intermediate = _ca_certificate(
        _name(f"meshware intermediate CA ({trust_domain}, {tag})"),
        intermediate_key.public_key(),
        root.subject,
        root_signing_key,
        INTERMEDIATE_TTL,
        path_length=0,
        issuer_public_key=root_public,
    )
    return Hierarchy(
        cert_pem(root), own_root_key, cert_pem(intermediate), key_pem(intermediate_key)
    )


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a PEM certificate signing request, once its signature verifies.

    The signature proves the requester holds the private key; nothing else in the CSR is
    used: the identity is the signer's to decide (a join token's subject, a verified client
    certificate), never the names the CSR asks for.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CSRError(f"not a PEM certificate signing request: {exc}") from None
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, (ec.SECP256R1, ec.SECP384R1)
    ):
        raise CSRError("the CSR's key must be an EC key on P-256 or P-384")
    if not csr.is_signature_valid:
        raise CSRError("the CSR's signature does not verify with its public key")
    return public_key


def check_issued_by(certificate: x509.Certificate, issuers: list[x509.Certificate]) -> bool:
    """True when one of ``issuers`` signed ``certificate`` (names and signature checked)."""
    for issuer in issuers:
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


class CertificateAuthority:
    """A CA directory, loaded: issues workload certificates with its intermediate."""

    def __init__(
        self,
        directory: Path,
        trust_domain: str,
        intermediate: x509.Certificate,
        intermediate_key: PrivateKey,
        bundle_pem: bytes,
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self.intermediate = intermediate
        self._key = intermediate_key
        self.bundle_pem = bundle_pem

    # -- creating and loading -----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        root_cert: bytes | None = None,
        root_key: bytes | None = None,
    ) -> CertificateAuthority:
        """Create a root (or take the operator's) and a signing intermediate in ``directory``."""
        path = Path(directory)
        if (path / "ca.json").exists():
            raise CAError(f"{path} already holds a CA (ca.json); refusing to overwrite it")
        SpiffeId(trust_domain, "default", "probe")  # validates the trust domain
        hierarchy = make_hierarchy(trust_domain, root_cert=root_cert, root_key=root_key)
        path.mkdir(parents=True, exist_ok=True)
        hierarchy.write(path)
        write_public(
            path / "ca.json",
            json.dumps(
                {"trust_domain": trust_domain, "own_root": hierarchy.root_key_pem is not None},
                indent=2,
            ).encode(),
        )
        return cls.load(path)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        path = Path(directory)
        try:
            meta = json.loads((path / "ca.json").read_text())
            intermediate = x509.load_pem_x509_certificate((path / "ca-cert.pem").read_bytes())
            key = serialization.load_pem_private_key(
                (path / "ca-key.pem").read_bytes(), password=None
            )
            bundle = (path / "root-cert.pem").read_bytes()
        except FileNotFoundError as exc:
            raise CAError(
                f"{path} is not a CA directory: missing {Path(exc.filename).name}"
            ) from None
        except (ValueError, KeyError) as exc:
            raise CAError(f"{path}: unreadable CA files: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{path / 'ca-key.pem'}: not an EC key")
        if key.public_key() != intermediate.public_key():
            raise CAError(f"{path}: ca-key.pem does not belong to ca-cert.pem")
        if not check_issued_by(intermediate, load_pem_certificates(bundle)):
            raise CAError(f"{path}: no root in root-cert.pem issued ca-cert.pem")
        return cls(path, str(meta["trust_domain"]), intermediate, key, bundle)

    # -- issuing ------------------------------------------------------------------------------

    def identity(self, service: str, namespace: str = "default") -> SpiffeId:
        return SpiffeId(self.trust_domain, namespace, service)

    @property
    def service_identity(self) -> SpiffeId:
        """The signing service's own identity (never granted to a workload)."""
        return SpiffeId(self.trust_domain, CA_SERVICE_NAMESPACE, CA_SERVICE_ACCOUNT)

    def sign(
        self,
        identity: SpiffeId,
        public_key: ec.EllipticCurvePublicKey,
        *,
        ttl: dt.timedelta = WORKLOAD_TTL,
        not_before: dt.datetime | None = None,
    ) -> bytes:
        """A workload certificate for ``identity`` and ``public_key``; returns leaf + intermediate."""
        if identity.trust_domain != self.trust_domain:
            raise CAError(
                f"this CA issues for trust domain {self.trust_domain!r}, not {identity.trust_domain!r}"
            )
        if not_before is None:  # valid for ``ttl`` from now, and a little before
            start, end = _now() - CLOCK_SKEW, _now() + ttl
        else:
            start, end = not_before, not_before + ttl
        end = min(end, self.intermediate.not_valid_after_utc)
        issuer_key = self.intermediate.public_key()
        assert isinstance(issuer_key, ec.EllipticCurvePublicKey)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(identity.service))
            .issuer_name(self.intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert_pem(leaf) + cert_pem(self.intermediate)

    def sign_csr(
        self, identity: SpiffeId, csr_pem: bytes, *, ttl: dt.timedelta = WORKLOAD_TTL
    ) -> bytes:
        """A workload certificate for ``identity`` and the key of a PEM CSR (see
        :func:`csr_public_key`); returns leaf + intermediate."""
        return self.sign(identity, csr_public_key(csr_pem), ttl=ttl)

    def issue(
        self,
        service: str,
        namespace: str = "default",
        *,
        ttl: dt.timedelta = WORKLOAD_TTL,
        not_before: dt.datetime | None = None,
    ) -> Credentials:
        """A new key and its certificate (for ``meshware ca issue`` and tests)."""
        key = new_key()
        chain = self.sign(
            self.identity(service, namespace), key.public_key(), ttl=ttl, not_before=not_before
        )
        return Credentials(chain, key_pem(key), self.bundle_pem)
