"""Bookinfo's reviews (FastAPI), in three versions chosen by ``MESHWARE_VERSION``:
v1 shows no ratings, v2 black stars, v3 red stars (v2 and v3 call ratings).

    meshware serve examples.bookinfo.reviews:app --service reviews --version v2 --port 9082
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from meshware import Mesh, MeshMiddleware, current_request

mesh = Mesh.from_env()
app = FastAPI(title="reviews", lifespan=mesh.lifespan)
app.add_middleware(MeshMiddleware, mesh=mesh)
client = mesh.async_client(timeout=5)
STARS = {"v2": "black", "v3": "red"}

REVIEWS = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
]


@app.get("/reviews/{product_id}")
async def reviews(product_id: int) -> dict[str, Any]:
    ratings: dict[str, int] | None = None
    ratings_saw: dict[str, Any] = {}
    color = STARS.get(mesh.version)
    if color is not None:
        response = await client.get(f"http://ratings:9080/ratings/{product_id}")
        if response.status_code == 200:
            body = response.json()
            ratings = body["ratings"]
            ratings_saw = {
                "traceparent": body["traceparent"],
                "baggage": body["baggage"],
                "caller": body["caller"],
            }
    context = current_request()
    return {
        "id": product_id,
        "served_by": f"reviews-{mesh.version}",
        "trace_id": context.trace_id if context else None,
        "reviews": [
            {
                "reviewer": reviewer,
                "text": text,
                **(
                    {"rating": {"stars": ratings.get(reviewer), "color": color}}
                    if ratings and color
                    else {}
                ),
            }
            for reviewer, text in REVIEWS
        ],
        "ratings_error": color is not None and ratings is None,
        "ratings_saw": ratings_saw,
    }
