"""Bookinfo's details (Flask): the book's facts.

meshware serve examples.bookinfo.details:app --service details --port 9081
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

from meshware import Mesh, MeshWSGIMiddleware, current_request

mesh = Mesh.from_env()
app = Flask("details")
app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]


@app.get("/details/<int:product_id>")
def details(product_id: int) -> Any:
    context = current_request()
    return jsonify(
        {
            "id": product_id,
            "author": "William Shakespeare",
            "year": 1595,
            "type": "paperback",
            "pages": 200,
            "publisher": "PublisherA",
            "language": "English",
            "ISBN-10": "1234567890",
            "served_by": f"details-{mesh.version}",
            "trace_id": context.trace_id if context else None,
        }
    )
