"""Bookinfo's traces, as a collector receives them over OTLP/HTTP.

Six Bookinfo services plus a second, failing ratings instance run as ``meshware serve``
processes exporting to a real OTLP/HTTP receiver on 127.0.0.1. One request through
productpage must arrive as one trace whose span tree covers all four services, with a child
span per attempt of the ratings call that was retried, and the callee's SERVER span under
the attempt that reached it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from meshware.config.registry import list_instances
from meshware.config.store import ConfigStore
from meshware.demo.services import BOOKINFO, Service
from meshware.middleware.context import new_id
from tests.helpers import BOOKINFO as MANIFESTS
from tests.helpers import wait_until
from tests.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver

BROKEN_RATINGS = Service("ratings", "v1", app="tests.broken_app:app")

RATINGS_RETRIES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings, subset: v1}}]
    retries: {attempts: 3, retryOn: 5xx}
"""

SAMPLE_ALL = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: {percent}
"""


@pytest.fixture
def bookinfo(serve: Callable[..., list[Service]]) -> Iterator[tuple[list[Service], Receiver]]:
    with otlp_receiver() as receiver:
        services = serve(*BOOKINFO, BROKEN_RATINGS, env={"MESHWARE_OTLP_ENDPOINT": receiver.url})
        yield services, receiver


def _url(services: list[Service], service: str, path: str) -> str:
    port = next(s.port for s in services if s.service == service and not s.app)
    return f"http://127.0.0.1:{port}{path}"


def _complete(spans: list[ReceivedSpan]) -> bool:
    services = {s.service for s in spans if s.kind == "SERVER"}
    parents = {s.parent_id for s in spans}
    attempts = [s for s in spans if s.name.startswith("attempt ")]
    return services >= {"productpage", "details", "reviews", "ratings"} and all(
        a.span_id in parents for a in attempts
    )


def _by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def _instances(redis_url: str, service: str) -> int:
    store = ConfigStore.from_url(redis_url)
    try:
        found = list_instances(store.client, store.keys, store.head(), url=redis_url)
        return sum(1 for s in found if s.record.service == service)
    finally:
        store.close()


def test_one_request_is_one_trace_across_four_services_with_retry_attempts(
    bookinfo: tuple[list[Service], Receiver], apply_yaml: Callable[[str], int], redis_url: str
) -> None:
    services, receiver = bookinfo
    apply_yaml(
        (MANIFESTS / "destination-rule-all.yaml").read_text()
        + "\n---\n"
        + (MANIFESTS / "virtual-service-reviews-jason-v2-v3.yaml").read_text()
        + "\n---\n"
        + RATINGS_RETRIES
    )
    page_url = _url(services, "productpage", "/productpage")

    def jason_page() -> dict[str, object]:
        try:
            response = httpx.get(page_url, headers={"end-user": "jason"}, timeout=10)
            return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]
        except httpx.HTTPError:
            return {}

    def served_by() -> object:
        reviews = jason_page().get("reviews")
        return reviews.get("served_by") if isinstance(reviews, dict) else None

    assert wait_until(lambda: served_by() == "reviews-v2", timeout=30)
    # both ratings instances (the real one and the failing one) are discovered by reviews-v2
    assert wait_until(lambda: _instances(redis_url, "ratings") == 2, timeout=10)

    retried: list[ReceivedSpan] = []
    trace_id = parent = ""
    for _ in range(8):  # round robin over the two ratings instances: one in two calls fails
        trace_id, parent = new_id(16), new_id(8)
        response = httpx.get(
            page_url,
            headers={
                "end-user": "jason",
                "traceparent": f"00-{trace_id}-{parent}-01",
                "baggage": "userId=jason",
            },
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["reviews"]["served_by"] == "reviews-v2"
        # the whole trace has arrived (batched every 0.5 s): every service's SERVER span,
        # and under every attempt the callee's SERVER span (each process exports in order,
        # so a process's earlier spans came with or before these)
        assert wait_until(lambda tid=trace_id: _complete(receiver.trace(tid)), timeout=10), (
            receiver.trace(trace_id)
        )
        retried = [
            s
            for s in receiver.trace(trace_id)
            if s.name == "GET ratings" and s.attributes.get("meshware.attempts") == 2
        ]
        if retried:
            break
    assert retried, "\n".join(
        f"{s.service} {s.name} {s.attributes}" for s in receiver.trace(trace_id)
    )

    spans = receiver.trace(trace_id)
    ids = _by_id(spans)
    # one tree: a single root (productpage's SERVER span, child of the caller's span)
    roots = [s for s in spans if s.parent_id not in ids]
    assert len(roots) == 1
    root = roots[0]
    assert (root.service, root.kind, root.parent_id) == ("productpage", "SERVER", parent)
    assert root.attributes["http.route"] == "/productpage"
    assert root.resource["service.version"] == "v1" and root.resource["service.instance.id"]
    assert {s.service for s in spans} == {"productpage", "details", "reviews", "ratings"}

    def children(span: ReceivedSpan) -> list[ReceivedSpan]:
        return sorted((s for s in spans if s.parent_id == span.span_id), key=lambda s: s.start_ns)

    # productpage → CLIENT "GET details" / "GET reviews" → attempt → the callee's SERVER span
    calls = {s.name: s for s in children(root)}
    assert set(calls) == {"GET details", "GET reviews"}
    for name, service in (("GET details", "details"), ("GET reviews", "reviews")):
        call = calls[name]
        assert call.kind == "CLIENT" and call.attributes["server.address"] == service
        assert (
            call.attributes["meshware.destination.service"]
            == f"{service}.default.svc.cluster.local"
        )
        (attempt,) = children(call)
        assert attempt.name == "attempt 1"
        (server,) = children(attempt)
        assert (server.service, server.kind) == (service, "SERVER")
    assert calls["GET reviews"].attributes["meshware.destination.subset"] == "v2"

    # reviews-v2 → "GET ratings", retried: attempt 1 reached the failing instance (503),
    # attempt 2 the healthy one; each callee's SERVER span hangs under its attempt
    (ratings_call,) = retried
    assert ratings_call.service == "reviews"
    assert ratings_call.attributes["meshware.retried"] is True
    assert ratings_call.attributes["http.response.status_code"] == 200
    first, second = children(ratings_call)
    assert (first.name, first.attributes["http.response.status_code"], first.error) == (
        "attempt 1",
        503,
        True,
    )
    assert (second.name, second.attributes["http.response.status_code"]) == ("attempt 2", 200)
    assert second.attributes["http.request.resend_count"] == 1
    assert first.attributes["server.port"] != second.attributes["server.port"]
    (failed_server,) = children(first)
    (ok_server,) = children(second)
    assert failed_server.attributes["http.response.status_code"] == 503
    assert ok_server.attributes["http.response.status_code"] == 200
    assert failed_server.service == ok_server.service == "ratings"


def _synced(redis_url: str, version: int) -> bool:
    store = ConfigStore.from_url(redis_url)
    try:
        found = list_instances(store.client, store.keys, store.head(), url=redis_url)
        return bool(found) and all(
            s.state == "SYNCED" and s.record.config_version == version for s in found
        )
    finally:
        store.close()


def test_a_sampling_change_applies_to_every_instance_within_a_second(
    bookinfo: tuple[list[Service], Receiver], apply_yaml: Callable[[str], int], redis_url: str
) -> None:
    services, receiver = bookinfo
    paths = {
        "productpage": "/health",
        "details": "/details/0",
        "reviews": "/reviews/0",
        "ratings": "/ratings/0",
    }
    targets = [(s, f"http://127.0.0.1:{s.port}{paths[s.service]}") for s in services if not s.app]
    assert wait_until(lambda: _instances(redis_url, "reviews") == 3, timeout=20)

    def traced_request_ids(**headers: str) -> dict[str, str]:
        """One request to every instance (no trace context unless ``headers`` give one):
        request id → service."""
        sent = {}
        for service, url in targets:
            request_id = new_id(16)
            response = httpx.get(url, headers={"x-request-id": request_id, **headers}, timeout=10)
            assert response.is_success
            sent[request_id] = service.service
        return sent

    def recorded(request_ids: dict[str, str]) -> set[tuple[str, str]]:
        """(request id, service) of the SERVER spans received for these requests."""
        with receiver.lock:
            return {
                (s.attributes["meshware.request_id"], s.service)
                for s in receiver.spans
                if s.kind == "SERVER" and s.attributes.get("meshware.request_id") in request_ids
            }

    for percent, recorded_all in ((100, True), (0, False)):
        started = time.monotonic()
        version = apply_yaml(SAMPLE_ALL.replace("{percent}", str(percent)))
        assert wait_until(lambda v=version: _synced(redis_url, v), timeout=5, interval=0.01)
        took = time.monotonic() - started
        assert took < 1.0, f"every instance applied {percent}% in {took:.2f}s"
        sent = traced_request_ids()
        if recorded_all:  # each instance started a sampled trace of its own
            assert wait_until(lambda s=sent: set(s.items()) <= recorded(s), timeout=10)
        else:
            # Markers: a request the caller sampled, to every instance, after the others.
            # Each instance exports its spans in order, so once its marker has arrived any
            # span of the earlier requests would have arrived too.
            markers = traced_request_ids(traceparent=f"00-{new_id(16)}-{new_id(8)}-01")
            assert wait_until(lambda m=markers: set(m.items()) <= recorded(m), timeout=10)
            assert recorded(sent) == set()
