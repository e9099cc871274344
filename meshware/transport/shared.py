"""Small request/response helpers used by both transports (no waiting, no sending)."""

from __future__ import annotations

import httpx

from meshware.config.discovery import Endpoint
from meshware.resilience.mirror import shadow_authority
from meshware.transport.outbound import Plan

MAX_MIRRORS_IN_FLIGHT = 64
DEFAULT_POOL_TIMEOUT = 5.0


def attempt_url(url: httpx.URL, endpoint: Endpoint, path: str) -> httpx.URL:
    """``url`` aimed at one endpoint, with the (possibly rewritten) path and the same query."""
    raw_path = path.encode("ascii", "replace")
    if url.query:
        raw_path += b"?" + url.query
    return url.copy_with(scheme="http", host=endpoint.host, port=endpoint.port, raw_path=raw_path)


def set_attempt_timeout(request: httpx.Request, timeout: float | None) -> None:
    """Cap every phase of this attempt at ``timeout`` seconds (keeping tighter client values)."""
    if timeout is None:
        return
    current = dict(request.extensions.get("timeout") or {})
    capped = {}
    for phase in ("connect", "read", "write", "pool"):
        value = current.get(phase)
        capped[phase] = timeout if value is None else min(value, timeout)
    request.extensions["timeout"] = capped


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
