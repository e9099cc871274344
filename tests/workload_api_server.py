"""A stand-in SPIRE agent: the SPIFFE Workload API (X.509 part) over gRPC on a unix socket.

SPIRE itself cannot be installed in the test environment, so this is a real gRPC server
implementing the same service (``SpiffeWorkloadAPI`` from the ``spiffe`` package's generated
stubs) the way the agent behaves towards a workload:

- every call must carry the ``workload.spiffe.io: true`` metadata header, or it fails with
  ``INVALID_ARGUMENT`` "security header missing from request" (as the agent answers);
- ``FetchX509SVID`` streams the current SVIDs at once and again after every change;
  ``FetchX509Bundles`` does the same for the trust bundles;
- the SVIDs are issued by a meshware :class:`CertificateAuthority`, and the test pushes a
  rotated SVID (:meth:`rotate`) or a changed bundle (:meth:`set_bundle`) on demand;
- the server can be stopped and started again on the same socket (the agent restarting).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from meshware.security.ca import CertificateAuthority, Credentials

HEADER = ("workload.spiffe.io", "true")
MISSING_HEADER = "security header missing from request"


def der_chain(pem: bytes) -> bytes:
    """PEM certificates as the Workload API carries them: DER, concatenated."""
    return b"".join(
        c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem)
    )


def der_key(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Issued:
    """One SVID the agent hands out: the meshware credentials it was made from."""

    service: str
    namespace: str
    credentials: Credentials

    @property
    def spiffe_id(self) -> str:
        return self.credentials.spiffe_id.uri


class WorkloadAPIServer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    """The fake agent. ``services`` are the identities it holds, the first being the default."""

    def __init__(
        self,
        socket: Path,
        ca: CertificateAuthority,
        services: tuple[str, ...] = ("reviews",),
        namespace: str = "default",
    ) -> None:
        self.socket = socket
        self.ca = ca
        self.svids = [Issued(s, namespace, ca.issue(s, namespace)) for s in services]
        self.bundle_pem = ca.bundle_pem
        self.rejected = 0
        """Calls refused for lack of the security header."""
        self.streams = 0
        """``FetchX509SVID`` streams opened (reconnections show up here)."""
        self.open_streams = 0
        """``FetchX509SVID`` streams open right now (a client that stops closes its own)."""
        self._changed = threading.Condition()
        self._version = 0
        self._server: grpc.Server | None = None
        self._stopping = False

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> WorkloadAPIServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.socket}")
        with self._changed:
            self._stopping = False
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """The agent goes away: open streams end, the socket stops answering."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> WorkloadAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the test pushes -----------------------------------------------------------------

    def rotate(self, index: int = 0) -> Credentials:
        """Issue a new SVID (new key) for the ``index``-th identity and push it."""
        current = self.svids[index]
        fresh = self.ca.issue(current.service, current.namespace)
        with self._changed:
            self.svids[index] = Issued(current.service, current.namespace, fresh)
            self._version += 1
            self._changed.notify_all()
        return fresh

    def set_bundle(self, bundle_pem: bytes) -> None:
        """Replace the trust domain's bundle (e.g. add the next root) and push it."""
        with self._changed:
            self.bundle_pem = bundle_pem
            self._version += 1
            self._changed.notify_all()

    # -- the Workload API ---------------------------------------------------------------------

    def _check_header(self, context: grpc.ServicerContext) -> None:
        if HEADER not in tuple(context.invocation_metadata()):
            with self._changed:
                self.rejected += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, MISSING_HEADER)

    def _updates(self, context: grpc.ServicerContext) -> Iterator[int]:
        """Yield the state version now and after every change, until the call or server ends."""
        context.add_callback(self._wake)
        sent = -1
        while True:
            with self._changed:
                while sent == self._version and not self._stopping and context.is_active():
                    self._changed.wait(0.5)
                if self._stopping or not context.is_active():
                    return
                sent = self._version
            yield sent

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _svid_response(self) -> Any:
        with self._changed:
            svids, bundle = list(self.svids), self.bundle_pem
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=s.spiffe_id,
                    x509_svid=der_chain(s.credentials.cert_pem),
                    x509_svid_key=der_key(s.credentials.key_pem),
                    bundle=der_chain(bundle),
                )
                for s in svids
            ]
        )

    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._check_header(context)
        with self._changed:
            self.streams += 1
            self.open_streams += 1
        try:
            for _ in self._updates(context):
                yield self._svid_response()
        finally:
            with self._changed:
                self.open_streams -= 1

    def FetchX509Bundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._check_header(context)
        for _ in self._updates(context):
            with self._changed:
                bundle = self.bundle_pem
            yield workload_pb2.X509BundlesResponse(
                bundles={self.ca.trust_domain: der_chain(bundle)}
            )
