"""Bookinfo-style reviews (FastAPI) whose versions can fail or slow down, for rollout tests.

``REVIEWS_FAULTS`` configures faults per version, e.g. ``v3:fail-every=5,v4:delay-ms=300``:
version v3 answers every 5th request with a 500 (exactly 20 %), v4 takes 300 ms longer.
Versions not listed behave. The faults sit *inside* the mesh middleware, so the mesh's own
metrics see them, as they would a real regression. ``GET /stats`` (not part of Bookinfo)
tells how many requests arrived, and how many were mirror copies (``-shadow`` authority).

    REVIEWS_FAULTS=v3:fail-every=5 meshware serve tests.apps.faulty_reviews:app \\
        --service reviews --version v3
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from meshware import Mesh, MeshMiddleware


def _faults(text: str, version: str) -> dict[str, int]:
    faults: dict[str, int] = {}
    for item in text.split(","):
        owner, _, setting = item.strip().partition(":")
        name, _, value = setting.partition("=")
        if owner == version and name and value.isdigit():
            faults[name] = int(value)
    return faults


mesh = Mesh.from_env()
FAULTS = _faults(os.environ.get("REVIEWS_FAULTS", ""), mesh.version)
FAIL_EVERY = FAULTS.get("fail-every", 0)
DELAY = FAULTS.get("delay-ms", 0) / 1000.0
app = FastAPI(title="reviews", lifespan=mesh.lifespan)
app.add_middleware(MeshMiddleware, mesh=mesh)
_counter = itertools.count(1)
_seen = {"requests": 0, "shadow": 0}


@app.get("/reviews/{product_id}", response_model=None)
async def reviews(product_id: int, request: Request) -> Any:
    number = next(_counter)
    _seen["requests"] += 1
    if request.headers.get("host", "").partition(":")[0].endswith("-shadow"):
        _seen["shadow"] += 1
    if DELAY:
        await asyncio.sleep(DELAY)
    if FAIL_EVERY and number % FAIL_EVERY == 0:
        return JSONResponse({"error": "injected failure"}, status_code=500)
    return {
        "id": product_id,
        "served_by": f"reviews-{mesh.version}",
        "reviews": [{"reviewer": "Reviewer1", "text": "An extremely entertaining play."}],
    }


@app.get("/stats")
async def stats() -> dict[str, int]:
    return dict(_seen)
