"""Driving requests at Bookinfo's productpage and counting which reviews version answered.

An :class:`Audience` is a kind of user (``jason``, everyone else) with the headers its requests
carry and the split the applied route promises it. :func:`drive` sends a fixed number of
requests with bounded concurrency, interleaving the audiences, and counts every answer in a
:class:`Tally` that the live table reads while requests are in flight. :func:`split_matches`
decides whether what was counted is what the weights promise, allowing for sampling error.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "Audience",
    "Sample",
    "Tally",
    "drive",
    "sample_request",
    "split_matches",
]

SIGMAS = 4.5
"""How far (in binomial standard deviations) a share may stray from its weight and still match."""


@dataclass(frozen=True, slots=True)
class Audience:
    """Users whose requests carry ``headers``, and the split (version → weight) promised them."""

    label: str
    expected: Mapping[str, int]
    headers: Mapping[str, str] = field(default_factory=dict)
    share: int = 1

    def fraction(self, version: str) -> float:
        total = sum(self.expected.values())
        return self.expected.get(version, 0) / total if total else 0.0


@dataclass
class Tally:
    """Answers per audience: reviews version (``v1``...) or an error description."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, audience: Audience, outcome: str) -> None:
        self.counts.setdefault(audience.label, Counter())[outcome] += 1

    def of(self, audience: Audience) -> Counter[str]:
        return self.counts.get(audience.label, Counter())

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def outcome_of(response: httpx.Response) -> str:
    """``v2`` for a page whose reviews came from reviews-v2; otherwise what went wrong."""
    if response.status_code != 200:
        return f"error: productpage {response.status_code}"
    reviews = response.json().get("reviews")
    if not isinstance(reviews, dict) or "served_by" not in reviews:
        error = reviews.get("error") if isinstance(reviews, dict) else None
        return f"error: reviews {error}" if error else "error: no reviews"
    return str(reviews["served_by"]).removeprefix("reviews-")


def _schedule(audiences: Sequence[Audience]) -> list[Audience]:
    """One cycle of audiences in proportion to their shares, interleaved."""
    cycle: list[Audience] = []
    left = {a.label: a.share for a in audiences}
    while any(left.values()):
        for audience in audiences:
            if left[audience.label]:
                cycle.append(audience)
                left[audience.label] -= 1
    return cycle


async def drive(
    url: str,
    audiences: Sequence[Audience],
    requests: int,
    tally: Tally,
    *,
    concurrency: int = 8,
    timeout: float = 10.0,
) -> None:
    """Send ``requests`` GETs to ``url`` (productpage), ``concurrency`` at a time."""
    cycle = _schedule(audiences)
    issued = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests:
            audience = cycle[issued % len(cycle)]
            issued += 1
            try:
                response = await client.get(url, headers=dict(audience.headers))
                outcome = outcome_of(response)
            except httpx.HTTPError as exc:
                outcome = f"error: {type(exc).__name__}"
            tally.add(audience, outcome)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def split_matches(audience: Audience, counts: Mapping[str, int]) -> bool:
    """Whether ``counts`` is a plausible sample of the audience's promised split.

    A version with weight 0 or 100 % must get exactly none or all; others must lie within
    :data:`SIGMAS` binomial standard deviations of their weight. Any error is a mismatch.
    """
    n = sum(counts.values())
    if n == 0:
        return False
    for version in set(counts) | set(audience.expected):
        observed = counts.get(version, 0)
        p = audience.fraction(version)
        if p in (0.0, 1.0):
            if observed != round(p * n):
                return False
        elif abs(observed - n * p) > SIGMAS * math.sqrt(n * p * (1 - p)):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Sample:
    """One traced request: the trace id sent and how far it travelled."""

    trace_id: str
    parent_id: str
    served_by: str
    productpage_trace: str | None
    reviews_trace: str | None
    ratings_traceparent: str | None
    ratings_baggage: str | None


def sample_request(url: str, headers: Mapping[str, str], *, timeout: float = 10.0) -> Sample:
    """Send one request with a fresh sampled ``traceparent`` and a ``baggage`` entry."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    sent = {
        **headers,
        "traceparent": f"00-{trace_id}-{parent_id}-01",
        "baggage": "demo=meshware",
    }
    response = httpx.get(url, headers=sent, timeout=timeout)
    response.raise_for_status()
    page: dict[str, Any] = response.json()
    reviews = page.get("reviews") if isinstance(page.get("reviews"), dict) else {}
    assert isinstance(reviews, dict)
    saw = reviews.get("ratings_saw") or {}
    return Sample(
        trace_id=trace_id,
        parent_id=parent_id,
        served_by=str(reviews.get("served_by", "?")),
        productpage_trace=page.get("trace_id"),
        reviews_trace=reviews.get("trace_id"),
        ratings_traceparent=saw.get("traceparent"),
        ratings_baggage=saw.get("baggage"),
    )
