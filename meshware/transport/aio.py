"""``AsyncMeshTransport``: the mesh as an asyncio httpx transport (for ASGI apps).

The same loop as :mod:`meshware.transport.sync` with asyncio waiting and sleeping; every
decision is made by the shared :class:`~meshware.transport.outbound.Outbound`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import httpx

from meshware.config.discovery import EndpointTable
from meshware.config.model.common import canonical_host
from meshware.config.model.networking import Destination
from meshware.errors import (
    EgressBlockedError,
    MeshTransportError,
    NoRouteError,
    UpstreamOverflowError,
    UpstreamTimeoutError,
)
from meshware.middleware.context import RequestContext, current_context
from meshware.routing.balance import Balancer
from meshware.telemetry.calls import OutboundCall, outbound_call, record_unrouted
from meshware.transport.endpoint import AsyncEndpointPool
from meshware.transport.outbound import (
    MeshView,
    Outbound,
    Passthrough,
    Plan,
    apply_header_operations,
    timeout_message,
)
from meshware.transport.pools import PoolSet
from meshware.transport.secure import tls_target
from meshware.transport.shared import (
    MAX_MIRRORS_IN_FLIGHT,
    abort_response,
    attempt_timeouts,
    live_addresses,
    mirror_request,
    pool_timeout,
    request_target,
    upstream_headers,
)
from meshware.transport.streams import AsyncClosingStream


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """Routes requests for mesh services; other hosts go to ``passthrough`` unchanged."""

    def __init__(
        self,
        mesh: MeshView,
        *,
        passthrough: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.outbound = Outbound(mesh, rng=rng, clock=clock)
        metrics = mesh.metrics
        self._meter = metrics.outbound if metrics is not None else None
        self._clock = clock
        self._sleep = sleep
        self._pools: PoolSet[AsyncEndpointPool] = PoolSet(AsyncEndpointPool)
        self._passthrough = passthrough or httpx.AsyncHTTPTransport()
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        self._notify_tasks: set[asyncio.Task[None]] = set()
        self._conditions: dict[int, asyncio.Condition] = {}
        self._pruned_for: EndpointTable | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        table = self.outbound.mesh.endpoint_table
        if table is not self._pruned_for:
            self._pruned_for = table
            await self.prune(live_addresses(table))
        try:
            plan = self.outbound.plan(request)
        except MeshTransportError as exc:
            exc.request = request
            if self._meter is not None and isinstance(exc, NoRouteError | EgressBlockedError):
                host = canonical_host(request.url.host.lower(), self.outbound.mesh.namespace)
                record_unrouted(self._meter, host, request, exc)
            raise
        if isinstance(plan, Passthrough):
            return await self._passthrough.handle_async_request(request)
        mesh = self.outbound.mesh
        context = current_context.get()
        call = outbound_call(
            self._meter, mesh.tracer, context, request, plan.decision, mesh.access_log
        )
        if plan.fault is not None:
            if plan.fault.delay:
                call.fault("delay")
                await self._sleep(plan.fault.delay)
            if plan.fault.abort:
                call.fault("abort")
                call.finish(plan.fault.abort)
                return abort_response(plan.fault.abort, request)
        for destination in plan.mirrors:
            self._mirror(request, plan, destination)
        try:
            await self._admit(plan, request)
        except BaseException as exc:
            call.finish(error=exc)
            raise
        try:
            return await self._send(request, plan, call, context)
        except BaseException as exc:
            call.finish(error=exc)
            self.outbound.end_retry(plan)
            self._release(plan)
            raise

    # -- admission (connectionPool limits) -------------------------------------------------

    def _condition(self, plan: Plan) -> asyncio.Condition:
        key = id(plan.state)
        condition = self._conditions.get(key)
        if condition is None:
            condition = self._conditions.setdefault(key, asyncio.Condition())
        return condition

    async def _admit(self, plan: Plan, request: httpx.Request) -> None:
        admission = plan.state.admission
        verdict = admission.try_admit()
        if verdict == "go":
            return
        if verdict == "reject":
            raise UpstreamOverflowError(
                f"{plan.decision.service_host}: pending request limit reached", request=request
            )
        condition = self._condition(plan)
        wait = pool_timeout(request)
        try:
            async with asyncio.timeout(wait), condition:
                await condition.wait_for(admission.dequeue)
        except TimeoutError:
            admission.abandon()
            overflow = UpstreamOverflowError(
                f"{plan.decision.service_host}: waited {wait:g}s for a free connection",
                request=request,
            )
            # ``from None`` alone is ignored by the compiled build; say it explicitly too.
            overflow.__suppress_context__ = True
            raise overflow from None

    def _release(self, plan: Plan) -> None:
        plan.state.admission.release()
        condition = self._conditions.get(id(plan.state))
        if condition is not None:
            task = asyncio.get_running_loop().create_task(self._notify(condition))
            self._notify_tasks.add(task)
            task.add_done_callback(self._notify_tasks.discard)

    @staticmethod
    async def _notify(condition: asyncio.Condition) -> None:
        async with condition:
            condition.notify()

    # -- the attempt loop --------------------------------------------------------------------

    async def _send(
        self,
        request: httpx.Request,
        plan: Plan,
        call: OutboundCall,
        context: RequestContext | None,
    ) -> httpx.Response:
        outbound = self.outbound
        now = self._clock()
        deadline = now + plan.timeout if plan.timeout else None
        if context is not None and context.deadline is not None:
            deadline = context.deadline if deadline is None else min(deadline, context.deadline)
        plan.state.budget.deposit()
        if plan.request_headers:
            apply_header_operations(request.headers, plan.request_headers)
        headers = upstream_headers(request, plan.authority, context, now)
        if self._meter is not None and plan.endpoints.registered:
            headers.append(self._meter.request_header)  # peer metadata, for mesh workloads only
        target = request_target(request.url, plan.path, plan.info.path)
        attempt = 0
        while True:
            try:
                endpoint = outbound.pick(plan)
            except MeshTransportError as exc:
                exc.request = request
                raise
            timeout = outbound.attempt_timeout(plan, deadline)
            if timeout is not None and timeout <= 0:
                raise UpstreamTimeoutError(timeout_message(plan), request=request)
            try:
                tls = tls_target(
                    outbound.mesh.tls, plan.state.policy, plan.decision.service_host, endpoint
                )
            except MeshTransportError as exc:
                exc.request = request
                raise
            pool = self._pools.get(endpoint, plan.state.limits.max_connections, tls)
            balancer = plan.state.balancer
            balancer.start(endpoint.address)
            try:
                response, peer, length = await pool.send(
                    request,
                    target,
                    call.attempt(endpoint, tls.expected if tls is not None else None, headers),
                    attempt_timeouts(request, timeout),
                )
            except httpx.TransportError as exc:
                call.attempt_end(error=exc)
                attempt += 1
                await self._sleep(outbound.failed(plan, endpoint, exc, attempt, deadline))
                continue
            status = response.status_code
            delay = outbound.answered(plan, endpoint, status, attempt, deadline)
            if delay is not None:
                call.attempt_end(status, peer=peer)
                attempt += 1
                await response.aclose()
                balancer.finish(endpoint.address)
                await self._sleep(delay)
                continue
            if outbound.buffers(plan, length):
                try:
                    await response.aread()
                except httpx.TransportError as exc:
                    call.attempt_end(error=exc)
                    attempt += 1
                    await self._sleep(outbound.failed(plan, endpoint, exc, attempt, deadline))
                    continue
                call.attempt_end(status, peer=peer)
                call.finish(status, response_bytes=response.num_bytes_downloaded)
                if plan.response_headers:
                    apply_header_operations(response.headers, plan.response_headers)
                balancer.finish(endpoint.address)
                self._release(plan)
                return response
            call.attempt_end(status, peer=peer)
            if plan.response_headers:
                apply_header_operations(response.headers, plan.response_headers)
            address = endpoint.address

            def done(
                address: str = address,
                balancer: Balancer = balancer,
                status: int = status,
                response: httpx.Response = response,
            ) -> None:
                balancer.finish(address)
                self._release(plan)
                call.finish(status, response_bytes=response.num_bytes_downloaded)

            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = AsyncClosingStream(response.stream, done)
            return response

    # -- mirroring ---------------------------------------------------------------------------

    def _mirror(self, request: httpx.Request, plan: Plan, destination: Destination) -> None:
        if not plan.replayable or len(self._mirror_tasks) >= MAX_MIRRORS_IN_FLIGHT:
            return  # never copy a body we cannot replay; drop rather than queue
        shadow = mirror_request(request, plan)
        task = asyncio.get_running_loop().create_task(self._send_mirror(shadow, plan, destination))
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    async def _send_mirror(
        self, shadow: httpx.Request, plan: Plan, destination: Destination
    ) -> None:
        try:
            state, endpoints = self.outbound.mirror_plan(plan, destination)
            if not endpoints:
                return
            address = state.balancer.pick([e.address for e in endpoints], None)
            endpoint = next(e for e in endpoints if e.address == address)
            target = request_target(shadow.url, shadow.url.path)
            headers = upstream_headers(shadow, shadow.headers["host"])
            host = canonical_host(destination.host, self.outbound.mesh.namespace)
            tls = tls_target(self.outbound.mesh.tls, state.policy, host, endpoint)
            response, _, _ = await self._pools.get(endpoint, None, tls).send(
                shadow, target, headers, attempt_timeouts(shadow, None)
            )
            await response.aread()
            await response.aclose()
        except (httpx.HTTPError, MeshTransportError):
            pass  # a mirror's fate never affects the caller

    # -- lifecycle ---------------------------------------------------------------------------

    async def prune(self, keep: set[str]) -> None:
        """Close pools of endpoints that left the mesh."""
        for pool in self._pools.prune(keep):
            await pool.aclose()

    async def aclose(self) -> None:
        for task in list(self._mirror_tasks):
            task.cancel()
        for pool in self._pools.drain():
            await pool.aclose()
        await self._passthrough.aclose()
