"""The workload side of the CA service: enrolling with a join token, renewing, rotating.

A workload makes a fresh EC P-256 key for every certificate, locally, and sends the CA
(``meshware ca serve``) only a certificate signing request. What comes back is checked
(the certificate is for this key and this identity, and chains to the bundle that came with
it) and written with :func:`~meshware.security.ca.write_credentials` into the workload's
credentials directory: ``cert.pem``, ``key.pem`` (0600) and ``bundle.pem``. Every process
serving from that directory picks the new files up within a second
(:meth:`WorkloadTLS.reload_if_changed <meshware.security.tls.WorkloadTLS.reload_if_changed>`).

**Authenticating the CA.** The first request carries the join token, so it must reach the
real CA. The workload has no bundle yet: it fetches one, keeps only the roots whose SHA-256
the token pins, talks to the service over TLS verified against those roots alone, and
checks that the server's certificate names the CA's SPIFFE ID
(``spiffe://<td>/ns/meshware-system/sa/meshware-ca``) before a byte of the request is sent.
Renewals use the current bundle and present the current certificate (mutual TLS).

**Renewing.** :class:`CertificateRenewer` renews when 45-55 % (uniformly random: instances
do not renew in lockstep) of the validity left at issue time has passed, retries failures
with capped exponential backoff (never waiting past a quarter of the time left), and, with
Redis, renews early when the CA announces a new trust bundle there (a hint only: the bundle
itself is taken from the CA's answer).
"""

from __future__ import annotations

import atexit
import logging
import random
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshware.config.keys import DEFAULT_MESH, Keys
from meshware.errors import MeshwareError
from meshware.security.bundle_hint import BundleHintWatcher, bundle_digest
from meshware.security.ca import (
    CA_SERVICE_ACCOUNT,
    CA_SERVICE_NAMESPACE,
    CAError,
    Credentials,
    certificates_pem,
    check_issued_by,
    fingerprint,
    key_pem,
    load_pem_certificates,
    new_key,
    write_credentials,
)
from meshware.security.identity import SpiffeId, spiffe_ids_of
from meshware.security.tls import BUNDLE_FILE, CERT_FILE, KEY_FILE
from meshware.security.tokens import TokenError, decode_token
from meshware.transport.endpoint import translated
from meshware.transport.secure import PeerIdentityError, TLSTarget, VerifyingBackend

__all__ = [
    "CAClient",
    "CertificateRenewer",
    "EnrollmentError",
    "Issued",
    "private_directory",
    "serving_renewer",
    "start_for_serve",
    "workload_renewer",
]

log = logging.getLogger("meshware.security.enroll")

MAX_BUNDLE = 1024 * 1024
RENEW_WINDOW = (0.45, 0.55)
MIN_HINT_INTERVAL = 5.0
"""At most one early renewal per this many seconds, however many bundle hints arrive."""
HINT_SPREAD = 1.0
"""An early renewal starts up to this many seconds after the hint (instances spread out)."""


class EnrollmentError(MeshwareError):
    """The CA service cannot be reached, refused the request, or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of a refusal; None when the CA was not reached or not believed."""


@dataclass(frozen=True, slots=True)
class Issued:
    """Credentials now in the workload's directory, and what their certificate says."""

    identity: SpiffeId
    serial: int
    not_before: float
    not_after: float


# -- talking to the CA: TLS verified against chosen roots, the server's identity checked ------


class _CATransport(httpx.BaseTransport):
    """httpx over httpcore with the mesh's verifying backend: every connection is TLS verified
    with ``context`` and then closed unless the server is ``expected``, before any byte of the
    request (and its join token) is written."""

    def __init__(self, context: ssl.SSLContext, expected: str) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            network_backend=VerifyingBackend(TLSTarget(context, expected)),
            retries=0,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core = httpcore.Request(
            request.method.encode("ascii"),
            httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with translated(request):
            response = self._pool.handle_request(core)
            try:
                content = response.read()
            finally:
                response.close()
        return httpx.Response(response.status, headers=response.headers, content=content)

    def close(self) -> None:
        self._pool.close()


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the SPIFFE ID is checked by VerifyingBackend
    return context


def _csr(key: ec.EllipticCurvePrivateKey, service: str) -> bytes:
    """A CSR proving possession of ``key``; the CA takes the identity from elsewhere."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


class CAClient:
    """Obtains and renews the certificate of one workload (``service`` in ``namespace``)
    from the CA service at ``ca_url``, into ``directory``.

    ``event_hooks`` are passed to the httpx client of certificate requests (to observe
    exactly what is sent).
    """

    def __init__(
        self,
        ca_url: str,
        directory: str | Path,
        *,
        service: str,
        namespace: str = "default",
        join_token: str | None = None,
        timeout: float = 10.0,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        parts = urlsplit(ca_url)
        if parts.scheme != "https" or not parts.netloc:
            raise EnrollmentError(f"the CA URL must be https://HOST:PORT, got {ca_url!r}")
        self.ca_url = ca_url.rstrip("/")
        self.directory = Path(directory)
        self.service = service
        self.namespace = namespace
        self.join_token = join_token
        self.timeout = timeout
        self.event_hooks = dict(event_hooks or {})

    # -- what the directory holds ------------------------------------------------------------

    def current(self, *, now: float | None = None) -> Issued | None:
        """The credentials in the directory, if they are this workload's and still valid."""
        try:
            chain = load_pem_certificates((self.directory / CERT_FILE).read_bytes())
            key = serialization.load_pem_private_key(
                (self.directory / KEY_FILE).read_bytes(), password=None
            )
            load_pem_certificates((self.directory / BUNDLE_FILE).read_bytes())
        except (OSError, ValueError, TypeError, CAError):
            return None
        leaf = chain[0]
        ids = spiffe_ids_of(leaf)
        try:
            identity = SpiffeId.parse(ids[0]) if len(ids) == 1 else None
        except ValueError:
            identity = None
        if (
            identity is None
            or (identity.service, identity.namespace) != (self.service, self.namespace)
            or key.public_key() != leaf.public_key()
            or leaf.not_valid_after_utc.timestamp() <= (time.time() if now is None else now)
        ):
            return None
        return _issued(leaf, identity)

    # -- requests ----------------------------------------------------------------------------

    def enroll(self) -> Issued:
        """A first certificate, paid for with the join token (spends it)."""
        if not self.join_token:
            raise EnrollmentError("no join token (MESHWARE_JOIN_TOKEN) to enroll with")
        try:
            claims = decode_token(self.join_token)
        except TokenError as exc:
            raise EnrollmentError(f"the join token is unusable: {exc}") from None
        subject = claims.subject
        if (subject.service, subject.namespace) != (self.service, self.namespace):
            raise EnrollmentError(
                f"the join token is for {subject}, but this workload is service "
                f"{self.service!r} in namespace {self.namespace!r}"
            )
        roots = [r for r in self._fetch_roots() if fingerprint(r) in claims.pins]
        if not roots:
            raise EnrollmentError(
                f"the CA at {self.ca_url} holds none of the roots the join token pins: "
                "a different CA, or someone impersonating it"
            )
        context = _client_context()
        context.load_verify_locations(cadata=certificates_pem(roots).decode("ascii"))
        expected = SpiffeId(subject.trust_domain, CA_SERVICE_NAMESPACE, CA_SERVICE_ACCOUNT)
        return self._request(context, expected, subject, token=self.join_token)

    def renew(self) -> Issued:
        """A new certificate (and key) for the identity of the current one (mutual TLS)."""
        current = self.current()
        if current is None:
            raise EnrollmentError(
                f"no valid certificate for {self.service}.{self.namespace} in "
                f"{self.directory} to renew with"
            )
        context = _client_context()
        try:
            context.load_cert_chain(self.directory / CERT_FILE, self.directory / KEY_FILE)
            context.load_verify_locations(cafile=str(self.directory / BUNDLE_FILE))
        except (ssl.SSLError, OSError) as exc:
            raise EnrollmentError(
                f"the credentials in {self.directory} do not load: {exc}"
            ) from None
        expected = SpiffeId(current.identity.trust_domain, CA_SERVICE_NAMESPACE, CA_SERVICE_ACCOUNT)
        return self._request(context, expected, current.identity, token=None)

    def obtain(self) -> Issued:
        """Credentials for a starting workload: renew the directory's valid certificate if
        there is one (so a restart does not need a new token), else enroll with the token.
        If that renewal fails (the CA no longer trusts the certificate's root, say) and there
        is a join token, enroll with it. Raises :class:`EnrollmentError`."""
        if self.current() is None:
            return self.enroll()
        try:
            return self.renew()
        except EnrollmentError as exc:
            if not self.join_token:
                raise
            log.warning("renewal failed (%s); enrolling with the join token", exc)
            try:
                return self.enroll()
            except EnrollmentError as again:
                raise EnrollmentError(
                    f"{exc}; and with the join token: {again}", status=again.status
                ) from again

    def _fetch_roots(self) -> list[x509.Certificate]:
        """The CA's bundle, fetched *without* verifying the server: only roots the token pins
        are used from it, and the connection that follows is verified against those."""
        context = _client_context()
        context.verify_mode = ssl.CERT_NONE
        url = f"{self.ca_url}/v1/bundle"
        try:
            with (
                httpx.Client(verify=context, timeout=self.timeout) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise EnrollmentError(
                        f"the CA at {self.ca_url} answered {response.status_code} for its bundle",
                        status=response.status_code,
                    )
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_BUNDLE:
                        raise EnrollmentError(f"the bundle from {url} is too large")
        except httpx.HTTPError as exc:
            raise EnrollmentError(f"cannot reach the CA at {self.ca_url}: {exc}") from exc
        try:
            return load_pem_certificates(data)
        except CAError as exc:
            raise EnrollmentError(f"the bundle from {url} is unreadable: {exc}") from None

    def _request(
        self,
        context: ssl.SSLContext,
        ca_identity: SpiffeId,
        identity: SpiffeId,
        *,
        token: str | None,
    ) -> Issued:
        key = new_key()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            with httpx.Client(
                transport=_CATransport(context, ca_identity.uri),
                timeout=self.timeout,
                event_hooks=self.event_hooks,
            ) as client:
                response = client.post(
                    f"{self.ca_url}/v1/certificates",
                    json={"csr": _csr(key, identity.service).decode("ascii")},
                    headers=headers,
                )
        except httpx.HTTPError as exc:
            if isinstance(exc.__cause__, PeerIdentityError):
                raise EnrollmentError(f"not the CA service at {self.ca_url}: {exc}") from exc
            raise EnrollmentError(f"cannot reach the CA at {self.ca_url}: {exc}") from exc
        answer = _json(response)
        if response.status_code != 200:
            message = answer.get("message") or response.text[:200]
            raise EnrollmentError(
                f"the CA at {self.ca_url} refused to {'enroll' if token else 'renew'} "
                f"{identity} ({response.status_code} {answer.get('reason', '')}): {message}",
                status=response.status_code,
            )
        credentials = _accept(answer, key, identity)
        write_credentials(self.directory, credentials)
        leaf = credentials.certificate
        issued = _issued(leaf, identity)
        log.info(
            "certificate for %s %s: serial %x, valid until %s",
            identity,
            "issued" if token else "renewed",
            issued.serial,
            _utc(issued.not_after),
        )
        return issued


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _accept(
    answer: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, identity: SpiffeId
) -> Credentials:
    """The credentials in a CA answer, once they are checked: a certificate for our key and
    our identity, issued by the intermediate that comes with it, which a root of the new
    bundle issued."""
    try:
        chain_pem = str(answer["certificate_chain"]).encode("ascii")
        bundle_pem = str(answer["trust_bundle"]).encode("ascii")
        chain = load_pem_certificates(chain_pem)
        roots = load_pem_certificates(bundle_pem)
    except (KeyError, UnicodeEncodeError, CAError) as exc:
        raise EnrollmentError(f"the CA's answer is unusable: {exc}") from None
    if len(chain) < 2 or not roots:
        raise EnrollmentError("the CA's answer lacks the intermediate or the trust bundle")
    leaf, intermediate = chain[0], chain[1]
    if leaf.public_key() != key.public_key():
        raise EnrollmentError("the CA answered a certificate for another key")
    if spiffe_ids_of(leaf) != [identity.uri]:
        raise EnrollmentError(
            f"the CA answered a certificate for {spiffe_ids_of(leaf)}, not {identity}"
        )
    if not check_issued_by(leaf, [intermediate]) or not check_issued_by(intermediate, roots):
        raise EnrollmentError("the CA's certificate does not chain to the bundle it sent")
    return Credentials(certificates_pem(chain), key_pem(key), certificates_pem(roots))


def _issued(leaf: x509.Certificate, identity: SpiffeId) -> Issued:
    return Issued(
        identity=identity,
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
    )


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


# -- keeping it fresh ----------------------------------------------------------------------------


class CertificateRenewer:
    """Keeps a workload's credentials renewed, in a daemon thread.

    ``renewals`` counts successful renewals since :meth:`start` (the first certificate is
    not one). ``clock`` and ``rng`` are injectable, so schedules can be tested exactly.
    """

    def __init__(
        self,
        client: CAClient,
        *,
        redis_url: str | None = None,
        mesh: str = DEFAULT_MESH,
        window: tuple[float, float] = RENEW_WINDOW,
        min_retry: float = 0.5,
        max_retry: float = 30.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.redis_url = redis_url
        self.keys = Keys(mesh)
        self.window = window
        self.min_retry = min_retry
        self.max_retry = max_retry
        self._clock = clock
        self._rng = rng or random.Random()
        self.renewals = 0
        self.failures = 0
        """Failed renewal attempts since the last success."""
        self.last_error = ""
        self.last_renewal = 0.0
        self.hints = 0
        """Bundle hints acted upon (early renewals asked for; see :meth:`bundle_hint`)."""
        self.current: Issued | None = None
        self._due = float("inf")
        self._last_hint = float("-inf")
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._hints: BundleHintWatcher | None = None

    @property
    def directory(self) -> Path:
        return self.client.directory

    @property
    def due(self) -> float:
        """When the next renewal (or retry) is planned (``clock()`` time; inf before start)."""
        return self._due

    # -- scheduling (no I/O) -------------------------------------------------------------------

    def next_delay(self, not_after: float, now: float) -> float:
        """Seconds until the next renewal: 45-55 % of the validity left."""
        low, high = self.window
        return max(0.0, not_after - now) * float(self._rng.uniform(low, high))

    def retry_delay(self, attempt: int, not_after: float, now: float) -> float:
        """Seconds before retry ``attempt`` (1, 2, ...): exponential from ``min_retry``,
        capped at ``max_retry`` and at a quarter of the validity left; half of it random."""
        delay = min(self.max_retry, self.min_retry * 2.0 ** min(attempt - 1, 30))
        left = not_after - now
        if left > 0:
            delay = min(delay, max(self.min_retry, left / 4))
        return delay * self._rng.uniform(0.5, 1.0)

    # -- running -----------------------------------------------------------------------------

    def start(self) -> CertificateRenewer:
        """Obtain credentials now (:meth:`CAClient.obtain`), then keep renewing them in the
        background. When the CA cannot be reached but the directory holds a valid
        certificate, that one is kept and renewal retried soon; otherwise the failure is
        raised (:class:`EnrollmentError`)."""
        fallback = self.client.current()
        try:
            issued = self.client.obtain()
        except EnrollmentError as exc:
            if fallback is None or fallback.not_after <= self._clock():
                raise
            # a CA outage must not stop a restart while the certificate is still good
            log.warning(
                "cannot renew at start (%s); keeping the current certificate, valid until %s",
                exc,
                _utc(fallback.not_after),
            )
            self.failures, self.last_error = 1, str(exc)
            now = self._clock()
            first = self.retry_delay(1, fallback.not_after, now)
            issued = fallback
        else:
            now = self._clock()
            first = self.next_delay(issued.not_after, now)
        with self._lock:
            self.current = issued
            self._due = now + first
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="meshware-renewer", daemon=True)
        self._thread.start()
        if self.redis_url:
            self._hints = BundleHintWatcher(
                self.redis_url, self.keys, current=self._bundle_digest, on_change=self.bundle_hint
            )
            self._hints.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._hints is not None:
            self._hints.stop()
            self._hints = None
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def renew_soon(self, within: float = 0.0, *, after: float | None = None) -> None:
        """Renew within ``within`` seconds (at a random moment in it) of now, or of ``after``
        (a ``clock()`` time), if that is earlier than planned."""
        with self._lock:
            start = self._clock() if after is None else after
            self._due = min(self._due, start + self._rng.uniform(0, within))
        self._wake.set()

    def _bundle_digest(self) -> str:
        try:
            return bundle_digest((self.directory / BUNDLE_FILE).read_bytes())
        except (OSError, CAError):
            return ""

    def bundle_hint(self) -> None:
        """The CA announced a bundle unlike ours: renew within :data:`HINT_SPREAD` seconds.

        At most one hint per :data:`MIN_HINT_INTERVAL` seconds is acted upon: one arriving
        sooner is deferred to the end of the interval (never lost), and any more arriving
        while that one is pending are dropped (it covers them).
        """
        now = self._clock()
        if self._last_hint > now:  # a deferred one is pending
            return
        self._last_hint = max(now, self._last_hint + MIN_HINT_INTERVAL)
        self.hints += 1
        self.renew_soon(HINT_SPREAD, after=self._last_hint)

    def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            wait = self._due - self._clock()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            try:
                issued = self.client.renew()
            except Exception as exc:  # EnrollmentError, or anything unexpected: retry
                attempt += 1
                self.failures = attempt
                self.last_error = str(exc)
                now = self._clock()
                not_after = self.current.not_after if self.current else now
                delay = self.retry_delay(attempt, not_after, now)
                if not_after <= now:
                    log.error(
                        "certificate expired and renewal failed (%s); retrying in %.1fs; "
                        "enroll again with a new join token if the CA no longer accepts it",
                        exc,
                        delay,
                    )
                else:
                    log.warning("renewal failed (%s); retrying in %.1fs", exc, delay)
                with self._lock:
                    self._due = now + delay
                continue
            attempt = 0
            now = self._clock()
            with self._lock:
                self.current = issued
                self.renewals += 1
                self.failures = 0
                self.last_error = ""
                self.last_renewal = now
                self._due = now + self.next_delay(issued.not_after, now)


def private_directory() -> Path:
    """A fresh private (0700) directory for credentials, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="meshware-certs-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def workload_renewer(
    *,
    ca_url: str,
    service: str,
    namespace: str = "default",
    join_token: str | None = None,
    cert_dir: str | Path | None = None,
    redis_url: str | None = None,
    mesh: str = DEFAULT_MESH,
) -> CertificateRenewer:
    """A renewer (not started) for one workload; credentials go to ``cert_dir`` or, without
    one, to a :func:`private_directory` (a restart then needs a new join token)."""
    client = CAClient(
        ca_url,
        Path(cert_dir) if cert_dir is not None else private_directory(),
        service=service,
        namespace=namespace,
        join_token=join_token,
    )
    return CertificateRenewer(client, redis_url=redis_url, mesh=mesh)


_serving: CertificateRenewer | None = None


def start_for_serve(
    ca_url: str,
    *,
    service: str,
    namespace: str = "default",
    join_token: str | None = None,
    cert_dir: str | Path | None = None,
    redis_url: str | None = None,
    mesh: str = DEFAULT_MESH,
) -> CertificateRenewer:
    """``meshware serve --ca-url``: obtain the credentials in this, the parent process,
    before the server and any worker start (one token use however many workers), and keep
    renewing them here; every worker picks the new files up. Raises
    :class:`EnrollmentError` (the CLI exits 1)."""
    global _serving
    renewer = workload_renewer(
        ca_url=ca_url,
        service=service,
        namespace=namespace,
        join_token=join_token,
        cert_dir=cert_dir,
        redis_url=redis_url,
        mesh=mesh,
    ).start()
    _serving = renewer
    atexit.register(renewer.stop)
    return renewer


def serving_renewer() -> CertificateRenewer | None:
    """The renewer :func:`start_for_serve` runs in this process, if any."""
    return _serving
