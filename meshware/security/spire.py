"""Workload identities from SPIRE: credentials taken from the SPIFFE Workload API, kept current.

Where SPIRE runs, an agent on every node attests workloads and hands them short-lived
X.509-SVIDs over the SPIFFE Workload API, rotating them well before they expire.
:class:`WorkloadAPICredentials` connects to that API (``unix:///run/spire/agent.sock``, the
``SPIFFE_ENDPOINT_SOCKET`` form), takes the default SVID (or the one with a given SPIFFE ID) and
the bundle of its trust domain, and writes them with
:func:`~meshware.security.ca.write_credentials` into a cert directory: the same ``cert.pem``,
``key.pem`` (0600) and ``bundle.pem`` every meshware workload reads. It then keeps the Workload
API stream open and writes each rotation or bundle change the agent pushes as it arrives; every
mesh process serving from the directory picks the files up by itself
(:meth:`~meshware.security.tls.WorkloadTLS.reload_if_changed`, about once a second).

When the agent goes away the last credentials stay where they are (they remain valid until they
expire) and the watcher reconnects with exponential backoff, logging the outage once and the
recovery once. Every attempt opens a fresh client, so gRPC's own reconnect backoff (which grows
to two minutes) never delays noticing that the agent is back.

The ``spiffe`` package is an optional extra (``pip install 'meshware[spire]'``), imported only
by this module and only when a watcher is created.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from meshware.errors import MeshwareError
from meshware.security.ca import Credentials, write_credentials
from meshware.security.identity import SpiffeId

if TYPE_CHECKING:
    from spiffe import X509Svid
    from spiffe.workloadapi.x509_context import X509Context

__all__ = [
    "SpireError",
    "WorkloadAPICredentials",
    "check_spiffe_endpoint",
    "start_for_serve",
]

log = logging.getLogger("meshware.security.spire")

DEFAULT_START_TIMEOUT = 30.0
"""How long :meth:`WorkloadAPICredentials.start` waits for the first SVID."""

INSTALL_HINT = "pip install 'meshware[spire]'"


class SpireError(MeshwareError):
    """The SPIFFE Workload API cannot be used: the extra is missing, the endpoint is invalid,
    or no usable SVID arrived."""


def check_spiffe_endpoint(endpoint: str) -> None:
    """Raise ``ValueError`` unless ``endpoint`` is a SPIFFE Workload API address as the SPIFFE
    standard writes ``SPIFFE_ENDPOINT_SOCKET``: ``unix:///absolute/path`` or ``tcp://IP:PORT``."""
    parts = urlsplit(endpoint)
    if parts.query or parts.fragment or "?" in endpoint or "#" in endpoint:
        raise ValueError(f"must not carry a query or fragment, got {endpoint!r}")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"must be unix:///absolute/path/to/socket, got {endpoint!r}")
        return
    if parts.scheme == "tcp":
        try:
            port = parts.port
            ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            port = None
        if port is None or parts.username or parts.password or parts.path not in ("", "/"):
            raise ValueError(f"must be tcp://IP:PORT (an IP address, not a name), got {endpoint!r}")
        return
    raise ValueError(f"must be a unix:// or tcp:// URL, got {endpoint!r}")


def _require_spiffe() -> None:
    try:
        import spiffe  # noqa: F401
    except ImportError as exc:
        raise SpireError(
            f"identities from the SPIFFE Workload API need the 'spiffe' package: {INSTALL_HINT}"
        ) from exc


def _pem(svid: X509Svid) -> tuple[bytes, bytes]:
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return chain, key


@dataclass
class _Attempt:
    """One Workload API stream, from connecting to its end."""

    over: threading.Event = field(default_factory=threading.Event)
    delivered: bool = False
    error: str = ""


class WorkloadAPICredentials:
    """Credentials from the SPIFFE Workload API at ``endpoint``, written into ``directory``
    (a new private 0700 temporary directory when not given, removed again by :meth:`stop`) and
    rewritten whenever the agent pushes new ones.

    ``spiffe_id`` picks one of several SVIDs offered to the workload; by default the first (the
    Workload API's default identity). meshware identities are Istio-shaped, so the SVID's ID must
    be ``spiffe://<trust domain>/ns/<namespace>/sa/<service>``. ``updates`` counts the credential
    sets written, ``reconnects`` the times the stream came back after the agent went away.
    """

    def __init__(
        self,
        endpoint: str,
        directory: str | os.PathLike[str] | None = None,
        *,
        spiffe_id: str | None = None,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        try:
            check_spiffe_endpoint(endpoint)
        except ValueError as exc:
            raise SpireError(f"SPIFFE Workload API endpoint {exc}") from None
        if endpoint.startswith("tcp://"):
            raise SpireError(
                f"cannot use {endpoint}: the spiffe package's Workload API client connects over "
                "unix:// sockets only; give the agent's socket (unix:///path/to/agent.sock)"
            )
        if spiffe_id is not None:
            try:
                SpiffeId.parse(spiffe_id)
            except ValueError as exc:
                raise SpireError(str(exc)) from None
        if not 0 < min_backoff <= max_backoff:
            raise SpireError("backoff must satisfy 0 < min_backoff <= max_backoff")
        _require_spiffe()
        self.endpoint = endpoint
        self.spiffe_id = spiffe_id
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._owns_directory = directory is None
        self.directory = (
            Path(tempfile.mkdtemp(prefix="meshware-spiffe-"))
            if directory is None
            else Path(directory)
        )
        self.updates = 0
        """Credential sets written (the first fetch included)."""
        self.reconnects = 0
        """Times the stream delivered again after the agent had gone away."""
        self.identity: SpiffeId | None = None
        """The identity of the credentials last written."""
        self.last_error: str | None = None
        """Why the latest attempt to use the Workload API failed (None while all is well)."""
        self._written: Credentials | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first = threading.Event()
        self._fatal: str | None = None
        self._attempt: _Attempt | None = None
        self._connected = False
        self._outage = False
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        """Whether a Workload API stream is open and has delivered."""
        return self._connected

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> WorkloadAPICredentials:
        """Connect, write the first credentials and keep watching; returns once they are written.

        Raises :class:`SpireError` (and stops) if no usable SVID arrives within ``timeout``
        seconds, or at once if the one offered cannot be used.
        """
        if self._thread is not None:
            raise SpireError("this Workload API watcher was already started")
        self._thread = threading.Thread(target=self._run, name="meshware-spiffe", daemon=True)
        self._thread.start()
        arrived = self._first.wait(timeout)
        if self._fatal is not None or not arrived:
            reason = self._fatal or (
                f"no X.509-SVID from the SPIFFE Workload API at {self.endpoint} within "
                f"{timeout:g} s" + (f" (last error: {self.last_error})" if self.last_error else "")
            )
            self.stop()
            raise SpireError(reason)
        return self

    def stop(self) -> None:
        """Close the stream and end the watcher; a directory it created is removed."""
        self._stopping.set()
        with self._lock:
            if self._attempt is not None:
                self._attempt.over.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> WorkloadAPICredentials:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the watch loop -----------------------------------------------------------------------

    def _run(self) -> None:
        from spiffe import WorkloadApiClient
        from spiffe.errors import PySpiffeError

        delay = self._min_backoff
        while not self._stopping.is_set():
            attempt = _Attempt()
            try:
                client = WorkloadApiClient(self.endpoint)
            except PySpiffeError as exc:  # e.g. the agent's socket is not there (yet)
                attempt.error = str(exc)
            else:
                with self._lock:
                    self._attempt = attempt
                if not self._stopping.is_set():
                    handler = client.stream_x509_contexts(
                        partial(self._received, attempt),
                        partial(self._ended, attempt),
                        retry_connect=False,  # reconnecting is ours: logged, counted, fresh
                    )
                    attempt.over.wait()
                    handler.cancel()
                client.close()
            if self._stopping.is_set():
                return
            if attempt.delivered:
                delay = self._min_backoff
            self._failed(attempt, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self._max_backoff)

    def _ended(self, attempt: _Attempt, error: Exception) -> None:
        attempt.error = str(error) or type(error).__name__
        self._connected = False
        attempt.over.set()

    def _failed(self, attempt: _Attempt, delay: float) -> None:
        """Log an attempt that ended; the first failure of an outage is a warning."""
        with self._lock:
            self.last_error = attempt.error
            newly_lost = attempt.delivered and not self._outage
            self._outage = self._outage or attempt.delivered
        if newly_lost:
            log.warning(
                "lost the SPIFFE Workload API at %s (%s); keeping the last credentials "
                "(%s, valid until %s) and reconnecting",
                self.endpoint,
                attempt.error,
                self.identity,
                self._expiry(),
            )
        else:
            log.debug(
                "SPIFFE Workload API at %s: %s; retrying in %.1f s",
                self.endpoint,
                attempt.error,
                delay,
            )

    def _expiry(self) -> str:
        written = self._written
        if written is None:
            return "-"
        return written.certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")

    def _received(self, attempt: _Attempt, context: X509Context) -> None:
        """A Workload API update (called on the stream's thread; never raises into it)."""
        try:
            credentials, identity = self._select(context)
        except SpireError as exc:
            self._refuse(str(exc))
            return
        back, problem = False, ""
        with self._lock:
            if self._stopping.is_set():
                return
            if not attempt.delivered:
                attempt.delivered = True
                self._connected = True
                self.last_error = None
                if self._outage:
                    self._outage, back = False, True
                    self.reconnects += 1
            changed = credentials != self._written
            if changed:
                try:
                    write_credentials(self.directory, credentials)
                except OSError as exc:
                    changed = False
                    problem = f"cannot write workload credentials into {self.directory}: {exc}"
            if changed:
                self._written, self.identity = credentials, identity
                self.updates += 1
        if back:
            log.info("SPIFFE Workload API at %s is back", self.endpoint)
        if changed:
            log.info(
                "workload credentials from the SPIFFE Workload API: %s, serial %x, valid until "
                "%s, written to %s",
                identity,
                credentials.certificate.serial_number,
                self._expiry(),
                self.directory,
            )
            self._first.set()
        elif problem:
            self._refuse(problem)

    def _refuse(self, problem: str) -> None:
        """An update that cannot be used: fatal before the first write, else keep the last."""
        self.last_error = problem
        if self._written is None:
            self._fatal = problem
            self._first.set()
        log.error("%s; keeping the last workload credentials", problem)

    def _select(self, context: X509Context) -> tuple[Credentials, SpiffeId]:
        """The chosen SVID and its trust domain's bundle, as PEM credentials."""
        offered = context.x509_svids
        if self.spiffe_id is None:
            svid = context.default_svid
        else:
            chosen = [s for s in offered if str(s.spiffe_id) == self.spiffe_id]
            if not chosen:
                ids = ", ".join(str(s.spiffe_id) for s in offered)
                raise SpireError(
                    f"the SPIFFE Workload API at {self.endpoint} offers no SVID for "
                    f"{self.spiffe_id} (it offers: {ids})"
                )
            svid = chosen[0]
        try:
            identity = SpiffeId.parse(str(svid.spiffe_id))
        except ValueError:
            raise SpireError(
                f"SVID {svid.spiffe_id}: meshware identities have the form spiffe://<trust "
                "domain>/ns/<namespace>/sa/<service>; register the workload in SPIRE with such an ID"
            ) from None
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None or not bundle.x509_authorities:
            raise SpireError(
                f"the SPIFFE Workload API sent no X.509 bundle for {identity.trust_domain}"
            )
        roots = sorted(c.public_bytes(serialization.Encoding.PEM) for c in bundle.x509_authorities)
        chain, key = _pem(svid)
        return Credentials(cert_pem=chain, key_pem=key, bundle_pem=b"".join(roots)), identity


def start_for_serve(
    endpoint: str,
    *,
    cert_dir: Path | None,
    environ: MutableMapping[str, str] = os.environ,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> WorkloadAPICredentials:
    """``meshware serve --spiffe-endpoint``: the first SVID is written before the server starts,
    the watcher keeps it current for as long as the process lives (stopped at exit).

    The credentials have one source: ``--cert-dir`` (``MESHWARE_CERT_DIR``) and
    ``MESHWARE_CA_URL`` are refused beside it. Sets ``MESHWARE_SPIFFE_ENDPOINT``; the caller
    points ``MESHWARE_CERT_DIR`` at the returned watcher's ``directory``.
    """
    if cert_dir is not None:
        raise SpireError(
            "--spiffe-endpoint and --cert-dir (MESHWARE_CERT_DIR) both say where the workload "
            "credentials come from; give one"
        )
    if environ.get("MESHWARE_CA_URL"):
        raise SpireError(
            "--spiffe-endpoint and MESHWARE_CA_URL both say where the workload credentials come "
            "from (SPIRE or the meshware CA); unset one"
        )
    started = time.monotonic()
    watcher = WorkloadAPICredentials(endpoint).start(timeout)
    atexit.register(watcher.stop)
    environ["MESHWARE_SPIFFE_ENDPOINT"] = endpoint
    log.info(
        "serving as %s from the SPIFFE Workload API (first SVID in %.2f s)",
        watcher.identity,
        time.monotonic() - started,
    )
    return watcher
