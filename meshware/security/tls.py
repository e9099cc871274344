"""A workload's TLS: its credentials as SSL contexts, and who is on the other end.

:class:`WorkloadTLS` loads ``cert.pem`` (the workload certificate and its intermediate),
``key.pem`` and ``bundle.pem`` (the trusted roots) from a directory and builds one server and
one client ``SSLContext``, never one per request or connection. :meth:`WorkloadTLS.reload`
loads new files into the *same* contexts: handshakes after it present the new certificate,
connections already open keep theirs, so rotation drops nothing.

Python's hostname check knows nothing of SPIFFE URI SANs, so both contexts verify the chain
only (``check_hostname`` off) and the identity is checked separately, once per connection:
:func:`peer_identity` reads the verified peer certificate's SPIFFE ID.
"""

from __future__ import annotations

import os
import ssl
import threading
from functools import lru_cache
from pathlib import Path

from cryptography import x509

from meshware.errors import MeshwareError
from meshware.security.identity import SpiffeId, spiffe_ids_of

__all__ = ["TLSConfigError", "WorkloadTLS", "identity_of_der", "peer_identity"]

CERT_FILE, KEY_FILE, BUNDLE_FILE = "cert.pem", "key.pem", "bundle.pem"


class TLSConfigError(MeshwareError):
    """Workload credentials are missing, unreadable or do not belong together."""


@lru_cache(maxsize=1024)
def identity_of_der(der: bytes) -> str | None:
    """The SPIFFE ID of a DER certificate, or None unless it carries exactly one."""
    try:
        ids = spiffe_ids_of(x509.load_der_x509_certificate(der))
    except ValueError:
        return None
    return ids[0] if len(ids) == 1 else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer's SPIFFE ID on a TLS connection (None without a peer certificate).

    Only meaningful on a context that verifies peers (``CERT_REQUIRED``/``CERT_OPTIONAL``):
    OpenSSL has already checked the chain against the trust bundle when this is called.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(True)  # positional: httpcore hands us the C-level _SSLSocket
    return identity_of_der(der) if der else None


class WorkloadTLS:
    """The credentials in ``directory`` and the SSL contexts built from them."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._server = self._context(ssl.Purpose.CLIENT_AUTH)
        self._client = self._context(ssl.Purpose.SERVER_AUTH)
        self.identity: SpiffeId
        self.not_after: float = 0.0
        self.reload()

    @property
    def trust_domain(self) -> str:
        return self.identity.trust_domain

    def _files(self) -> tuple[Path, Path, Path]:
        d = self.directory
        return d / CERT_FILE, d / KEY_FILE, d / BUNDLE_FILE

    @staticmethod
    def _context(purpose: ssl.Purpose) -> ssl.SSLContext:
        side = (
            ssl.PROTOCOL_TLS_SERVER
            if purpose is ssl.Purpose.CLIENT_AUTH
            else ssl.PROTOCOL_TLS_CLIENT
        )
        context = ssl.SSLContext(side)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # SPIFFE IDs are URI SANs: checked by peer_identity()
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def reload(self) -> SpiffeId:
        """(Re)load the files into the existing contexts; returns the workload's identity."""
        cert, key, bundle = self._files()
        for path in (cert, key, bundle):
            if not path.is_file():
                raise TLSConfigError(f"workload credentials: {path} is missing")
        try:
            leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
        except ValueError as exc:
            raise TLSConfigError(f"{cert}: not a PEM certificate ({exc})") from None
        ids = spiffe_ids_of(leaf)
        if len(ids) != 1:
            raise TLSConfigError(
                f"{cert}: a workload certificate carries one SPIFFE ID, found {ids}"
            )
        try:
            identity = SpiffeId.parse(ids[0])
        except ValueError as exc:
            raise TLSConfigError(f"{cert}: {exc}") from None
        with self._lock:
            try:
                for context in (self._server, self._client):
                    context.load_cert_chain(cert, key)
                    context.load_verify_locations(cafile=str(bundle))
            except (ssl.SSLError, OSError) as exc:
                raise TLSConfigError(
                    f"workload credentials in {self.directory} do not load: {exc}"
                ) from None
            self.identity = identity
            self.not_after = leaf.not_valid_after_utc.timestamp()
        return identity

    def server_context(self, *, require_client_certificate: bool = True) -> ssl.SSLContext:
        """The context servers use: STRICT requires a client certificate (mutual TLS)."""
        self._server.verify_mode = (
            ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
        )
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """The context the mesh client uses: presents the workload certificate, verifies the
        server's chain against the bundle (the identity is checked per connection)."""
        return self._client
