"""Small request/response helpers used by both transports (no waiting, no sending)."""

from __future__ import annotations

import httpx

from meshware.config.discovery import EndpointTable
from meshware.middleware.context import RequestContext
from meshware.resilience.mirror import shadow_authority
from meshware.transport.outbound import Plan, header_fields

MAX_MIRRORS_IN_FLIGHT = 64
DEFAULT_POOL_TIMEOUT = 5.0


def live_addresses(table: EndpointTable) -> set[str]:
    """Every registered endpoint address: pools for anything else can be closed."""
    return {e.address for endpoints in table.services.values() for e in endpoints}


def request_target(url: httpx.URL, path: str, original: str | None = None) -> bytes:
    """The request target (path and query) to send upstream, with the rewritten path
    (``original``: ``url.path``, when the caller has it at hand already)."""
    if path == (url.path if original is None else original):
        return url.raw_path
    target = path.encode("ascii", "replace")
    return target + b"?" + url.query if url.query else target


def upstream_headers(
    request: httpx.Request, authority: str, context: RequestContext | None = None, now: float = 0.0
) -> list[tuple[bytes, bytes]]:
    """The request's headers as sent upstream: the logical authority as Host, and the inbound
    request's context (trace, baggage, request id, deadline, sticky keys) unless the
    application set those headers itself."""
    # One loop rather than three comprehensions (each a function call before Python 3.12).
    headers = [(b"host", authority.encode("ascii", "replace"))]
    present: set[bytes] = set()
    for name, lower, value in header_fields(request.headers):
        present.add(lower)
        if lower != b"host":
            headers.append((name, value))
    if context is not None:
        for item in context.outbound_headers(now):
            if item[0] not in present:
                headers.append(item)
    return headers


def attempt_timeouts(request: httpx.Request, timeout: float | None) -> dict[str, float | None]:
    """The client's timeouts for this attempt, each capped at ``timeout`` seconds."""
    current: dict[str, float | None] = request.extensions.get("timeout") or {}
    if timeout is None:
        return current
    return {
        phase: timeout if current.get(phase) is None else min(current[phase] or timeout, timeout)
        for phase in ("connect", "read", "write", "pool")
    }


def pool_timeout(request: httpx.Request) -> float:
    value = (request.extensions.get("timeout") or {}).get("pool")
    return float(value) if value is not None else DEFAULT_POOL_TIMEOUT


def abort_response(status: int, request: httpx.Request) -> httpx.Response:
    """What Envoy's fault filter answers with when it aborts a request."""
    return httpx.Response(
        status,
        headers={"content-type": "text/plain", "x-meshware-fault": "abort"},
        content=b"fault filter abort",
        request=request,
    )


def mirror_request(request: httpx.Request, plan: Plan) -> httpx.Request:
    """A copy of the logical request for a mirror, with Envoy's ``-shadow`` authority."""
    headers = httpx.Headers(request.headers)
    headers["host"] = shadow_authority(plan.authority)
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=request.content if request.content else None,
        extensions={"timeout": {"connect": 5.0, "read": 10.0, "write": 5.0, "pool": 1.0}},
    )
