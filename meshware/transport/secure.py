"""Mutual TLS towards an endpoint, with the SPIFFE identity checked before any request byte.

**When.** A DestinationRule's ``trafficPolicy.tls.mode: ISTIO_MUTUAL`` requires mutual TLS
with the workload certificate; ``DISABLE`` forbids it; with no ``tls`` setting the endpoint
decides (Istio's auto-mTLS): mutual TLS if it advertises it in the registry and this instance
has workload credentials, plaintext otherwise.

**Whom.** The identity expected is derived from the destination the route chose,
``spiffe://<trust domain>/ns/<namespace>/sa/<service>``, never from what the endpoint
advertises: an instance that registers under someone else's address gains nothing.

**How.** httpcore opens the TCP connection, then calls ``start_tls`` on the stream; the
:class:`VerifyingBackend` wraps the plain stream so that right after the handshake (chain
verified by OpenSSL against the trust bundle) the peer certificate's SPIFFE ID is compared
with the expected one. On a mismatch the connection is closed and :class:`PeerIdentityError`
(an ``httpcore.ConnectError``, so callers see ``httpx.ConnectError``) raised: the request is
never written. Once per connection; pooled requests reuse the checked connection. The
handshake uses the client context current *at that moment* (not the one the pool was built
with), so rotated certificates and trust bundles apply to every new connection.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpcore

from meshware.config.discovery import Endpoint
from meshware.config.model.networking import TrafficPolicy
from meshware.errors import MeshTransportError
from meshware.security.identity import SpiffeId
from meshware.security.tls import WorkloadTLS, peer_identity

__all__ = ["STATS", "PeerIdentityError", "TLSTarget", "VerifyingBackend", "tls_target"]


class TLSStats:
    """Process-wide counts of mutual TLS connections opened and handshakes completed (a
    handshake per connection, never per request: pooled requests reuse the connection)."""

    def __init__(self) -> None:
        self._connections = itertools.count()
        self._handshakes = itertools.count()
        self.connections = 0
        self.handshakes = 0

    def connected(self) -> None:
        self.connections = next(self._connections) + 1

    def handshaken(self) -> None:
        self.handshakes = next(self._handshakes) + 1


STATS = TLSStats()


class PeerIdentityError(httpcore.ConnectError):
    """The server's certificate names another workload than the destination chosen."""


@dataclass(frozen=True, slots=True)
class TLSTarget:
    """How to reach one endpoint over TLS: our credentials and whom to expect.

    ``source`` is the workload's :class:`WorkloadTLS` (its current client context is used for
    each new connection) or a fixed ``SSLContext`` (a workload enrolling with the CA).
    """

    source: WorkloadTLS | ssl.SSLContext
    expected: str

    @property
    def context(self) -> ssl.SSLContext:
        """The client context for a connection made now (rotated credentials included)."""
        source = self.source
        return source if isinstance(source, ssl.SSLContext) else source.client_context()


def tls_target(
    tls: WorkloadTLS | None,
    policy: TrafficPolicy | None,
    service_host: str,
    endpoint: Endpoint,
) -> TLSTarget | None:
    """The mutual TLS to use towards ``endpoint`` of ``service_host``, or None for plaintext."""
    mode = policy.tls.mode if policy is not None and policy.tls is not None else None
    if mode == "DISABLE" or mode in ("SIMPLE", "MUTUAL"):
        return None  # SIMPLE/MUTUAL (own certificates) are for external services
    if mode != "ISTIO_MUTUAL" and not endpoint.mtls:
        return None
    if tls is None:
        if mode == "ISTIO_MUTUAL":
            raise MeshTransportError(
                f"{service_host}: the DestinationRule requires ISTIO_MUTUAL but this instance "
                "has no workload certificate (MESHWARE_CERT_DIR)"
            )
        return None  # the endpoint offers mTLS; without credentials we can only try plaintext
    return TLSTarget(tls, expected_identity(tls.trust_domain, service_host))


@lru_cache(maxsize=1024)
def expected_identity(trust_domain: str, service_host: str) -> str:
    """``reviews.default.svc.cluster.local`` → ``spiffe://<td>/ns/default/sa/reviews``
    (memoised: it is asked on every attempt of a mutual TLS call)."""
    name, _, rest = service_host.partition(".")
    namespace = rest.partition(".")[0] or "default"
    return SpiffeId(trust_domain, namespace, name).uri


def _mismatch(stream: Any, expected: str) -> PeerIdentityError | None:
    """Count the handshake; the error to raise if the peer is not ``expected``."""
    STATS.handshaken()
    got = peer_identity(stream.get_extra_info("ssl_object"))
    if got == expected:
        return None
    return PeerIdentityError(
        f"peer identity mismatch: expected {expected}, the server presented {got or 'none'}"
    )


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, target: TLSTarget) -> None:
        self._inner = inner
        self._target = target

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        del ssl_context  # the pool's: the credentials current now are used instead
        secured = self._inner.start_tls(self._target.context, server_hostname, timeout)
        error = _mismatch(secured, self._target.expected)
        if error is not None:
            secured.close()  # before any request byte is written
            raise error
        return secured

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, target: TLSTarget) -> None:
        self._inner = inner
        self._target = target

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        del ssl_context  # the pool's: the credentials current now are used instead
        secured = await self._inner.start_tls(self._target.context, server_hostname, timeout)
        error = _mismatch(secured, self._target.expected)
        if error is not None:
            await secured.aclose()  # before any request byte is written
            raise error
        return secured

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class VerifyingBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, checking the peer's SPIFFE ID after each TLS handshake."""

    def __init__(self, target: TLSTarget) -> None:
        self._inner = httpcore.SyncBackend()
        self._target = target

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        STATS.connected()
        return _Stream(stream, self._target)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AsyncVerifyingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio backend, checking the peer's SPIFFE ID after each TLS handshake."""

    def __init__(self, target: TLSTarget) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._target = target

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        STATS.connected()
        return _AsyncStream(stream, self._target)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
