"""Mutual TLS and plaintext on one uvicorn port, following the workload's PeerAuthentication
live (PERMISSIVE, STRICT and DISABLE without a restart).

Envoy serves Istio's PERMISSIVE mode with a *TLS inspector*: it looks at the first bytes a
client sends, without consuming them, and picks the TLS or the plaintext filter chain. This
module does the same inside uvicorn, per accepted connection:

1. uvicorn accepts the connection and builds its protocol through ``config.http``; here that
   is :class:`SniffingProtocol`, which pauses reading at once, so no byte is consumed.
2. It waits until the socket is readable (``add_reader`` on a duplicate of the descriptor:
   asyncio owns the original) and peeks at one byte with ``recv(1, MSG_PEEK)``. A client that
   sends nothing is disconnected after ``timeout`` seconds, without holding anything else up.
3. It reads the mode the mesh holds *now* (recompiled on every config change, so a
   PeerAuthentication applied through Redis affects the next connection):

   - ``0x16`` (a TLS handshake record): ``loop.start_tls`` with the workload's server context
     (client certificate required), unless the mode is DISABLE: then the connection is closed;
   - anything else is plaintext HTTP: served in PERMISSIVE and DISABLE; under STRICT the
     connection is closed before a byte of the request is read (what Envoy does).

4. It hands the connection (TLS or plain) to :class:`~meshware.security.uvicorn_tls.
   MeshH11Protocol`, built with exactly the arguments uvicorn gave it, so connection tracking,
   graceful shutdown, ``limit_concurrency`` and keep-alive behave as under plain uvicorn.
   Plaintext connections carry no ``tls`` extension: :func:`meshware.peer_identity` is None.

Bytes the TLS layer decrypts between the end of the handshake and the hand-off (a client's
first request often travels with its ``Finished`` message) are kept and replayed in order.

Without workload credentials no TLS is possible: :class:`GatedH11Protocol` serves plaintext as
uvicorn always did and only refuses connections when the mode is STRICT (fail closed).

Like :mod:`~meshware.security.uvicorn_tls` this depends on uvicorn internals (the protocol's
constructor arguments and ``ServerState.connections``): :func:`protocol_factory` checks the
version with :func:`~meshware.security.uvicorn_tls.check_uvicorn`. It is written for asyncio's
own event loop, which ``meshware.serving`` selects.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Final, Protocol

from meshware.errors import MeshwareError
from meshware.security.peer_auth import InboundMode
from meshware.security.tls import WorkloadTLS
from meshware.security.uvicorn_tls import MeshH11Protocol, check_uvicorn

__all__ = [
    "DEFAULT_DETECTION_TIMEOUT",
    "TLS_HANDSHAKE",
    "GatedH11Protocol",
    "InboundGate",
    "InboundProtocols",
    "SniffingProtocol",
    "protocol_factory",
    "serve_in_this_process",
    "worker_protocol",
]

log = logging.getLogger("meshware.security")

TLS_HANDSHAKE: Final = 0x16
"""The first byte of every TLS connection: the content type of a handshake record."""

DEFAULT_DETECTION_TIMEOUT: Final = 10.0
"""Seconds a new connection may stay silent (or spend in the TLS handshake)."""


class InboundGate(Protocol):
    """What the server asks at each new connection (a :class:`~meshware.Mesh` is one)."""

    @property
    def inbound_mtls(self) -> InboundMode: ...

    @property
    def tls(self) -> WorkloadTLS | None: ...


class GatedH11Protocol(MeshH11Protocol):
    """Plaintext serving for a workload without credentials: STRICT refuses every connection."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        gate: InboundGate,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._gate = gate

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if not self._gate.inbound_mtls.accepts_plaintext:
            log.debug("refused a connection from %s: STRICT without credentials", self.client)
            transport.abort()


class SniffingProtocol(asyncio.Protocol):
    """Peeks at a new connection's first byte, enforces the mode, hands it to uvicorn's h11.

    After the hand-off this object only relays the few protocol events the TLS layer had
    already addressed to it (see the module docstring).
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        gate: InboundGate,
        context: ssl.SSLContext,
        timeout: float = DEFAULT_DETECTION_TIMEOUT,
    ) -> None:
        self._uvicorn: tuple[Any, Any, dict[str, Any]] = (config, server_state, app_state)
        self._connections: set[Any] = server_state.connections
        self._loop = _loop or asyncio.get_event_loop()
        self._gate = gate
        self._context = context
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._probe: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._inner: MeshH11Protocol | None = None
        self._early: list[bytes] = []
        self._eof = False
        self._lost = False
        self._client: object = None

    # -- detection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.pause_reading()  # before asyncio registers its reader: nothing is consumed
        self._connections.add(self)
        self._client = transport.get_extra_info("peername")
        try:
            self._probe = transport.get_extra_info("socket").dup()
            self._loop.add_reader(self._probe.fileno(), self._readable)
        except (OSError, AttributeError) as exc:
            self._refuse(f"cannot watch the socket ({exc})")
            return
        self._timer = self._loop.call_later(self._timeout, self._silent)

    def _readable(self) -> None:
        probe, transport = self._probe, self._transport
        if probe is None or transport is None:
            return
        try:
            first = probe.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # spurious wake-up: keep waiting
        except OSError:
            first = b""  # reset before sending anything
        self._stop_probe()
        if not first:
            self._refuse("")  # closed without a byte (a port check, a health probe)
            return
        mode = self._gate.inbound_mtls.mode
        if first[0] == TLS_HANDSHAKE:
            if mode == "DISABLE":
                self._refuse("TLS under PeerAuthentication DISABLE")
                return
            self._handshake = self._loop.create_task(self._start_tls(transport))
        elif mode == "STRICT":
            self._refuse("plaintext under PeerAuthentication STRICT")
        else:
            self._attach(transport)
            transport.resume_reading()

    def _silent(self) -> None:
        self._timer = None
        self._refuse(f"sent nothing for {self._timeout:g}s")

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        try:
            secured = await self._loop.start_tls(
                transport,
                self,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        except asyncio.CancelledError:
            self._forget()  # start_tls closed the connection
            raise
        except Exception as exc:  # handshake refused, reset or timed out: connection closed
            log.debug("TLS handshake with %s failed: %s", self._client, exc)
            self._forget()
            return
        if secured is None or self._lost:
            self._forget()
            if secured is not None:
                secured.abort()
            return
        self._attach(secured)

    def _attach(self, transport: asyncio.Transport) -> None:
        """Give the connection to uvicorn's h11 protocol (TLS transport or plain)."""
        config, server_state, app_state = self._uvicorn
        inner = MeshH11Protocol(
            config=config, server_state=server_state, app_state=app_state, _loop=self._loop
        )
        self._connections.discard(self)
        self._inner = inner
        inner.connection_made(transport)
        transport.set_protocol(inner)
        early, self._early = self._early, []
        for data in early:
            inner.data_received(data)
        if self._eof:
            inner.eof_received()

    def _refuse(self, reason: str) -> None:
        self._stop_probe()
        if reason:
            log.debug("closed the connection from %s: %s", self._client, reason)
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and forgets us

    def _stop_probe(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        probe, self._probe = self._probe, None
        if probe is not None:
            self._loop.remove_reader(probe.fileno())
            probe.close()  # the duplicate only; the connection stays open

    def _forget(self) -> None:
        self._stop_probe()
        self._connections.discard(self)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: a connection not yet handed over is just closed."""
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        else:
            self._refuse("server shutting down")

    # -- the asyncio protocol, relayed once handed over --------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)  # decrypted before the hand-off: replayed by _attach

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()  # h11's keeps nothing open: the transport closes
        else:
            self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)
            return
        self._lost = True
        self._forget()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class InboundProtocols:
    """uvicorn's ``http`` protocol factory for ``gate``'s workload, deciding per connection:
    sniffing with credentials, gated plaintext without (credentials may arrive after the
    server started, from a CA service or SPIRE)."""

    def __init__(self, gate: InboundGate, *, timeout: float = DEFAULT_DETECTION_TIMEOUT) -> None:
        check_uvicorn()
        self.gate = gate
        self.timeout = timeout
        self._context: tuple[WorkloadTLS, ssl.SSLContext] | None = None

    def __call__(self, **uvicorn_arguments: Any) -> asyncio.Protocol:
        gate = self.gate
        tls = gate.tls
        if tls is None:
            return GatedH11Protocol(**uvicorn_arguments, gate=gate)
        cached = self._context
        if cached is None or cached[0] is not tls:  # one stable server context per WorkloadTLS
            cached = self._context = (tls, tls.server_context(require_client_certificate=True))
        return SniffingProtocol(
            **uvicorn_arguments, gate=gate, context=cached[1], timeout=self.timeout
        )


def protocol_factory(
    gate: InboundGate, *, timeout: float = DEFAULT_DETECTION_TIMEOUT
) -> InboundProtocols:
    """The ``http`` protocol for a uvicorn ``Config`` serving ``gate``'s workload. Raises
    :class:`~meshware.MeshwareError` for an untested uvicorn."""
    return InboundProtocols(gate, timeout=timeout)


_process_protocols: InboundProtocols | None = None


def serve_in_this_process(gate: InboundGate, *, timeout: float = DEFAULT_DETECTION_TIMEOUT) -> None:
    """Make :func:`worker_protocol` serve ``gate`` (a uvicorn worker process has one mesh)."""
    global _process_protocols
    _process_protocols = InboundProtocols(gate, timeout=timeout)


def worker_protocol(**uvicorn_arguments: Any) -> asyncio.Protocol:
    """uvicorn's ``http`` for worker processes (importable, so it survives the spawn): the
    protocol of the mesh the worker registered with :func:`serve_in_this_process`."""
    protocols = _process_protocols
    if protocols is None:
        raise MeshwareError(
            "no mesh serves this worker process (meshware.serving:worker_app registers it)"
        )
    return protocols(**uvicorn_arguments)
