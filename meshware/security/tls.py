"""A workload's TLS: its credentials as SSL contexts, and who is on the other end.

:class:`WorkloadTLS` loads ``cert.pem`` (the workload certificate and its intermediate),
``key.pem`` and ``bundle.pem`` (the trusted roots) from a directory into one server and one
client ``SSLContext``, never one per request or connection.

**Rotation.** :meth:`WorkloadTLS.reload` builds *fresh* contexts from the files and swaps them
in with one assignment, so a bundle that drops an old root really stops trusting it (OpenSSL
can add roots to a context but never remove them). Nothing that holds a context has to be
told: the server is handed one stable *front* context whose ``sni_callback`` switches every
handshake to the current credentials, and the mesh client's verifying backends ask for
:meth:`WorkloadTLS.client_context` at each new connection. Connections already open keep the
credentials they were made with, so a rotation drops none. :meth:`reload_if_changed` is what
the mesh calls about once a second: whoever renews a certificate only writes the files.

Python's hostname check knows nothing of SPIFFE URI SANs, so the contexts verify the chain
only (``check_hostname`` off) and the identity is checked separately, once per connection:
:func:`peer_identity` reads the verified peer certificate's SPIFFE ID.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509

from meshware.errors import MeshwareError
from meshware.security.identity import SpiffeId, spiffe_ids_of

__all__ = ["TLSConfigError", "WorkloadTLS", "identity_of_der", "peer_identity"]

CERT_FILE, KEY_FILE, BUNDLE_FILE = "cert.pem", "key.pem", "bundle.pem"

log = logging.getLogger("meshware.security")


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


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One generation of credentials: the contexts built from it and what the leaf says."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    identity: SpiffeId
    not_before: float
    not_after: float
    serial: int
    stamp: tuple[tuple[int, int, int], ...]


def _context(purpose: ssl.Purpose) -> ssl.SSLContext:
    side = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    context = ssl.SSLContext(side)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # SPIFFE IDs are URI SANs: checked by peer_identity()
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class WorkloadTLS:
    """The credentials in ``directory`` and the SSL contexts built from them."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self.generation = 0
        """How many times credentials were loaded (1 after construction)."""
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None
        self._server_verify = ssl.CERT_REQUIRED
        self._loaded = self._load()
        self.generation = 1
        self._front = self._loaded.server
        self._front.sni_callback = self._switch

    # -- what the leaf certificate says ---------------------------------------------------

    @property
    def identity(self) -> SpiffeId:
        return self._loaded.identity

    @property
    def trust_domain(self) -> str:
        return self._loaded.identity.trust_domain

    @property
    def not_before(self) -> float:
        return self._loaded.not_before

    @property
    def not_after(self) -> float:
        return self._loaded.not_after

    @property
    def serial(self) -> int:
        return self._loaded.serial

    # -- loading ---------------------------------------------------------------------------

    def _files(self) -> tuple[Path, Path, Path]:
        d = self.directory
        return d / CERT_FILE, d / KEY_FILE, d / BUNDLE_FILE

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._files():
            try:
                st = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _load(self) -> _Loaded:
        cert, key, bundle = self._files()
        stamp = self._stamp()
        for path in (cert, key, bundle):
            if not path.is_file():
                raise TLSConfigError(f"workload credentials: {path} is missing")
        try:
            leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
        except (ValueError, OSError) as exc:
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
        server, client = _context(ssl.Purpose.CLIENT_AUTH), _context(ssl.Purpose.SERVER_AUTH)
        server.verify_mode = self._server_verify
        try:
            for context in (server, client):
                context.load_cert_chain(cert, key)
                context.load_verify_locations(cafile=str(bundle))
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(
                f"workload credentials in {self.directory} do not load: {exc}"
            ) from None
        return _Loaded(
            server=server,
            client=client,
            identity=identity,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
            serial=leaf.serial_number,
            stamp=stamp,
        )

    def reload(self) -> SpiffeId:
        """Build fresh contexts from the files and swap them in; returns the identity.

        On :class:`TLSConfigError` the previous credentials stay in use.
        """
        with self._lock:
            loaded = self._load()
            self._loaded = loaded
            self.generation += 1
            self._failed_stamp = None
        log.info(
            "workload credentials loaded: %s, serial %x, valid until %s",
            loaded.identity,
            loaded.serial,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(loaded.not_after)),
        )
        return loaded.identity

    def reload_if_changed(self) -> bool:
        """Reload when any of the three files changed since the last load; True if it did.

        A set caught half-written (a new certificate beside the old key) fails to load and is
        tried again on the next call, once the writer has finished.
        """
        stamp = self._stamp()
        if stamp == self._loaded.stamp:
            return False
        try:
            self.reload()
        except TLSConfigError as exc:
            if stamp != self._failed_stamp:
                self._failed_stamp = stamp
                log.warning("new workload credentials do not load yet (will retry): %s", exc)
            return False
        return True

    # -- contexts --------------------------------------------------------------------------

    def _switch(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        """``sni_callback`` of the front context: this handshake uses the current credentials."""
        current = self._loaded.server
        if ssl_object.context is not current:
            ssl_object.context = current

    def server_context(self, *, require_client_certificate: bool = True) -> ssl.SSLContext:
        """The one context to give a server: every handshake on it uses the current
        credentials. Mutual TLS: a client certificate chaining to the bundle is required
        (``require_client_certificate=False`` makes it optional)."""
        mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
        with self._lock:
            self._server_verify = mode
            self._front.verify_mode = mode
            self._loaded.server.verify_mode = mode
        return self._front

    def client_context(self) -> ssl.SSLContext:
        """The current client context: presents the workload certificate and verifies the
        server's chain against the bundle (the identity is checked per connection)."""
        return self._loaded.client
