"""Bookinfo's ratings (Flask): stars per reviewer.

meshware serve examples.bookinfo.ratings:app --service ratings --port 9083
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from meshware import Mesh, MeshWSGIMiddleware, current_request, peer_identity

mesh = Mesh.from_env()
app = Flask("ratings")
app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]


@app.get("/ratings/<int:product_id>")
def ratings(product_id: int) -> Any:
    context = current_request()
    return jsonify(
        {
            "id": product_id,
            "ratings": {"Reviewer1": 5, "Reviewer2": 4},
            "served_by": f"ratings-{mesh.version}",
            "trace_id": context.trace_id if context else None,
            "traceparent": request.headers.get("traceparent"),
            "baggage": request.headers.get("baggage"),
            # the caller's SPIFFE ID under mutual TLS (meshware serve --cert-dir), else None
            "caller": peer_identity(),
        }
    )
