"""The shared decision core of both transports, without I/O: maxRetries is enforced."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from meshware.config.discovery import EndpointTable, build_table
from meshware.config.parse import load_yaml, parse_documents
from meshware.config.registry import InstanceRecord
from meshware.resilience.retry import Outcome
from meshware.routing.table import RouteTable
from meshware.security.tls import WorkloadTLS
from meshware.telemetry.tracing import Tracer
from meshware.transport.outbound import Outbound, OutboundPolicy, Plan

CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: flaky
  trafficPolicy:
    connectionPool: {http: {maxRetries: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 3, retryOn: 5xx}
"""


@dataclass
class View:
    route_table: RouteTable
    endpoint_table: EndpointTable
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = "default"
    outbound_traffic_policy: OutboundPolicy = "ALLOW_ANY"
    tracer: Tracer | None = None
    tls: WorkloadTLS | None = None


def _outbound() -> Outbound:
    routes = RouteTable.compile(parse_documents(load_yaml(CONFIG, "test.yaml")))
    endpoints = build_table(
        InstanceRecord(
            instance=f"flaky-{i}", service="flaky", version="v1", address=f"127.0.0.1:{9000 + i}"
        )
        for i in range(3)
    )
    return Outbound(View(routes, endpoints), rng=random.Random(1))


def _plan(outbound: Outbound) -> Plan:
    plan = outbound.plan(httpx.Request("GET", "http://flaky/x"))
    assert isinstance(plan, Plan)
    return plan


def test_max_retries_caps_retries_in_flight_across_requests() -> None:
    outbound = _outbound()
    first, second = _plan(outbound), _plan(outbound)
    failure = Outcome.response(503)
    assert outbound.retry_delay(first, 1, failure, None) is not None  # takes the only slot
    assert outbound.retry_delay(second, 1, failure, None) is None  # maxRetries: 1 reached
    endpoint = outbound.pick(first)
    assert outbound.answered(first, endpoint, 200, 1, None) is None  # first's retry is over
    assert outbound.retry_delay(second, 1, failure, None) is not None  # the slot is free again
