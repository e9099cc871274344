"""Bookinfo's productpage (FastAPI): the front page, calling details and reviews concurrently.

It forwards no tracing header: the mesh client carries the inbound request's context. Only
``end-user`` is passed on explicitly, as Istio's productpage does from its login session.

    meshware serve examples.bookinfo.productpage:app --service productpage --port 9080
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Header

from meshware import Mesh, MeshMiddleware, current_request

mesh = Mesh.from_env()
app = FastAPI(title="productpage", lifespan=mesh.lifespan)
app.add_middleware(MeshMiddleware, mesh=mesh)
client = mesh.async_client(timeout=5)


@app.get("/productpage")
async def productpage(
    product_id: int = 0, end_user: str | None = Header(default=None)
) -> dict[str, Any]:
    user_headers = {"end-user": end_user} if end_user else {}
    details, reviews = await asyncio.gather(
        client.get(f"http://details:9080/details/{product_id}"),
        client.get(f"http://reviews:9080/reviews/{product_id}", headers=user_headers),
    )
    context = current_request()
    return {
        "product_id": product_id,
        "user": end_user,
        "trace_id": context.trace_id if context else None,
        "details": details.json() if details.status_code == 200 else {"error": details.status_code},
        "reviews": reviews.json() if reviews.status_code == 200 else {"error": reviews.status_code},
    }


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
