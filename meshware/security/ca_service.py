"""The CA signing service: ``meshware ca serve --dir DIR``.

Workloads make their key pair locally and send only a certificate signing request; the key
never leaves them. The service answers over HTTPS with a certificate it issues to itself
(``spiffe://<td>/ns/meshware-system/sa/meshware-ca``), asks for a client certificate
(optional) and verifies one against the trust bundle.

``POST /v1/certificates`` with ``{"csr": "<PEM>"}``:

- with ``Authorization: Bearer <join token>``: a first certificate for the token's subject;
  the token must carry this CA's MAC, be unexpired and never used before (see
  :mod:`meshware.security.tokens`);
- without a token, over a connection with a verified client certificate: a renewal for the
  identity in that certificate.

The identity always comes from the token or the peer certificate, never from the CSR, whose
only use is its public key, once its signature verifies. The answer is
``{"spiffe_id", "serial", "not_after", "certificate_chain", "trust_bundle"}``; refusals are
``4xx`` with ``{"error", "reason", "message"}``, logged with the client's address, and never
carry a stack trace. ``GET /v1/bundle`` answers the trust bundle (PEM).

The service notices changes to the CA directory (a root rotation, :mod:`~meshware.security.
rotation`) within a second, without a restart: it reloads the CA, re-issues its own
certificate, serves the new bundle, and (with Redis) publishes it as a hint
(:mod:`~meshware.security.bundle_hint`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from meshware.security.bundle_hint import BundlePublisher
from meshware.security.ca import (
    WORKLOAD_TTL,
    CAError,
    CertificateAuthority,
    Credentials,
    CSRError,
    certificates_pem,
    csr_public_key,
    key_pem,
    load_pem_certificates,
    new_key,
    write_credentials,
)
from meshware.security.identity import SpiffeId
from meshware.security.peer import from_scope
from meshware.security.tls import WorkloadTLS
from meshware.security.tokens import TokenError, TokenKey, UsedTokens
from meshware.security.uvicorn_tls import MeshH11Protocol, check_uvicorn

__all__ = ["DEFAULT_PORT", "CAService", "Refused"]

log = logging.getLogger("meshware.security.ca_service")

DEFAULT_PORT = 15012
"""istiod's CA port, for familiarity."""
MAX_BODY = 64 * 1024
OWN_MIN_TTL = dt.timedelta(hours=1)
"""The service's own certificate lives at least this long; it is re-issued at half its
lifetime and whenever the CA directory changes."""
_WATCHED = ("ca.json", "root-cert.pem", "ca-cert.pem", "ca-key.pem")


class Refused(CAError):
    """A request the service turns down: the HTTP status and what the client is told."""

    def __init__(self, status: int, error: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.reason = reason
        self.message = message

    def response(self) -> JSONResponse:
        headers = {"www-authenticate": 'Bearer error="invalid_token"'} if self.status == 401 else {}
        return JSONResponse(
            {"error": self.error, "reason": self.reason, "message": self.message},
            status_code=self.status,
            headers=headers,
        )


class CAService:
    """One CA directory, served: issues and renews workload certificates."""

    def __init__(
        self,
        directory: str | Path,
        *,
        ttl: dt.timedelta = WORKLOAD_TTL,
        publisher: BundlePublisher | None = None,
        refresh_interval: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.ttl = ttl
        self.publisher = publisher
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._authority = CertificateAuthority.load(self.directory)
        self._stamp = self._files_stamp()
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None
        self.tokens = TokenKey.load_or_create(self.directory)
        self.used = UsedTokens(self.directory)
        self.serving_dir = self.directory / "serving"
        self.serving_dir.mkdir(mode=0o700, exist_ok=True)
        self._generation = 1
        """+1 each time the CA directory is reloaded."""
        self._tls: WorkloadTLS | None = None
        self._own_due = 0.0
        self._own_generation = 0
        self.issued = 0
        self.refused = 0

    # -- the CA directory, followed ------------------------------------------------------

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for name in _WATCHED:
            try:
                st = (self.directory / name).stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _reload_if_changed(self) -> bool:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            try:
                authority = CertificateAuthority.load(self.directory)
            except CAError as exc:  # caught mid-rotation: keep the last good CA, retry later
                if stamp != self._failed_stamp:
                    self._failed_stamp = stamp
                    log.warning("the CA files changed but do not load yet (will retry): %s", exc)
                return False
            self._authority, self._stamp, self._failed_stamp = authority, stamp, None
            self._generation += 1
        roots = load_pem_certificates(authority.bundle_pem)
        log.info(
            "CA reloaded: %d root(s) in the bundle, signing with %s",
            len(roots),
            authority.intermediate.subject.rfc4514_string(),
        )
        return True

    @property
    def authority(self) -> CertificateAuthority:
        """The CA as the directory holds it now (reloaded when its files changed)."""
        self._reload_if_changed()
        return self._authority

    def refresh(self, *, now: float | None = None) -> None:
        """Follow the CA directory, keep the service's own certificate fresh, publish the
        bundle. Called once a second by :meth:`serve`."""
        self._reload_if_changed()
        current = time.time() if now is None else now
        if self._own_generation != self._generation or current >= self._own_due:
            self._issue_own(current)
        if self.publisher is not None:
            self.publisher.publish(self._authority.bundle_pem)

    def _issue_own(self, now: float) -> None:
        with self._lock:
            authority, generation = self._authority, self._generation
        key = new_key()
        chain = authority.sign(
            authority.service_identity, key.public_key(), ttl=max(self.ttl, OWN_MIN_TTL)
        )
        bundle = certificates_pem(load_pem_certificates(authority.bundle_pem))
        write_credentials(self.serving_dir, Credentials(chain, key_pem(key), bundle))
        leaf = x509.load_pem_x509_certificate(chain)
        self._own_due = now + (leaf.not_valid_after_utc.timestamp() - now) / 2
        self._own_generation = generation
        if self._tls is not None:
            self._tls.reload()
        log.info(
            "serving certificate issued: %s, serial %x",
            authority.service_identity,
            leaf.serial_number,
        )

    # -- issuing --------------------------------------------------------------------------

    def certificate_for(
        self, csr_pem: bytes, token: str | None, peer: str | None, *, client: str = "?"
    ) -> dict[str, Any]:
        """The answer to one ``POST /v1/certificates`` (blocking: file I/O and signing).

        Raises :class:`Refused`. Order: authenticate (token MAC and expiry, or the peer
        certificate), check the CSR, and only then spend the token, so a malformed request
        does not burn it.
        """
        authority = self.authority
        if token is not None:
            try:
                claims = self.tokens.verify(token)
            except TokenError as exc:
                raise Refused(401, "invalid_token", exc.reason, str(exc)) from None
            identity, how = claims.subject, f"join token {claims.token_id}"
        elif peer is not None:
            try:
                identity = SpiffeId.parse(peer)
            except ValueError as exc:
                raise Refused(403, "forbidden", "bad identity", str(exc)) from None
            claims, how = None, "renewal"
        else:
            raise Refused(
                401,
                "unauthenticated",
                "no credentials",
                "send a join token (Authorization: Bearer ...) or present your current "
                "certificate to renew it",
            )
        if identity.trust_domain != authority.trust_domain:
            raise Refused(
                403,
                "forbidden",
                "foreign trust domain",
                f"this CA issues for {authority.trust_domain!r}, not {identity.trust_domain!r}",
            )
        if identity == authority.service_identity:
            raise Refused(403, "forbidden", "reserved identity", f"{identity} is the CA's own")
        try:
            public_key = csr_public_key(csr_pem)
        except CSRError as exc:
            raise Refused(400, "bad_csr", "bad csr", str(exc)) from None
        if claims is not None:
            try:
                self.used.claim(claims)
            except TokenError as exc:
                raise Refused(401, "invalid_token", exc.reason, str(exc)) from None
        chain = authority.sign(identity, public_key, ttl=self.ttl)
        leaf = x509.load_pem_x509_certificate(chain)
        self.issued += 1
        log.info(
            "issued %s to %s (%s): serial %x, valid until %s",
            identity,
            client,
            how,
            leaf.serial_number,
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
        return {
            "spiffe_id": identity.uri,
            "serial": f"{leaf.serial_number:x}",
            "not_after": leaf.not_valid_after_utc.isoformat(),
            "certificate_chain": chain.decode("ascii"),
            "trust_bundle": certificates_pem(load_pem_certificates(authority.bundle_pem)).decode(
                "ascii"
            ),
        }

    # -- HTTP -------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/certificates", self._certificates, methods=["POST"]),
                Route("/v1/bundle", self._bundle, methods=["GET"]),
                Route("/healthz", self._healthz, methods=["GET"]),
            ]
        )

    async def _healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def _bundle(self, request: Request) -> Response:
        bundle = certificates_pem(load_pem_certificates(self.authority.bundle_pem))
        return Response(bundle, media_type="application/x-pem-file")

    async def _certificates(self, request: Request) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "?"
        peer = from_scope(request.scope)
        try:
            csr = _csr_of(await _body(request))
            token = _bearer(request)
            answer = await run_in_threadpool(self.certificate_for, csr, token, peer, client=client)
        except Refused as refusal:
            self.refused += 1
            log.warning(
                "refused %s%s: %s (%s)",
                client,
                f" ({peer})" if peer else "",
                refusal.reason,
                refusal.message,
            )
            return refusal.response()
        except Exception:
            log.exception("error while answering %s", client)
            return JSONResponse(
                {
                    "error": "internal",
                    "reason": "internal",
                    "message": "the CA failed; see its log",
                },
                status_code=500,
            )
        return JSONResponse(answer)

    # -- running --------------------------------------------------------------------------

    def server(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> uvicorn.Server:
        """A uvicorn server for the service over TLS (client certificate optional)."""
        check_uvicorn()
        self.refresh()
        self._tls = WorkloadTLS(self.serving_dir)
        config = uvicorn.Config(
            self.app(), host=host, port=port, lifespan="off", log_level="info", access_log=False
        )
        config.http = MeshH11Protocol
        config.load()
        config.ssl = self._tls.server_context(require_client_certificate=False)
        return uvicorn.Server(config)

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        """Serve until a signal, refreshing once every ``refresh_interval`` seconds."""
        server = self.server(host, port)
        stop = threading.Event()
        refresher = threading.Thread(
            target=self._refresh_loop, args=(stop,), name="meshware-ca-refresh", daemon=True
        )
        refresher.start()
        log.info(
            "CA service for %s on https://%s:%d, certificates valid %s",
            self._authority.trust_domain,
            host,
            port,
            self.ttl,
        )
        try:
            server.run()
        finally:
            stop.set()
            refresher.join(5)
            if self.publisher is not None:
                self.publisher.close()

    def _refresh_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except Exception:
                log.exception("CA refresh failed (will retry)")


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > MAX_BODY):
        raise Refused(413, "bad_request", "too large", f"the body must be under {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(
                413, "bad_request", "too large", f"the body must be under {MAX_BODY} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _csr_of(body: bytes) -> bytes:
    """The CSR of a request body ``{"csr": "<PEM>"}``: nothing else is accepted (a body
    that carries anything more, a private key for instance, is refused)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, "bad_request", "not json", 'expected {"csr": "<PEM>"}') from None
    if not isinstance(data, dict) or set(data) != {"csr"} or not isinstance(data["csr"], str):
        raise Refused(400, "bad_request", "bad body", 'expected exactly {"csr": "<PEM>"}')
    csr: str = data["csr"]
    return csr.encode("utf-8", "replace")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Refused(
            401, "invalid_token", "malformed", "expected Authorization: Bearer <join token>"
        )
    return value.strip()
