"""A Flask app that joins the mesh itself with ``Mesh.from_env()``."""

from typing import Any

from flask import Flask, jsonify

from meshware import Mesh, MeshWSGIMiddleware, current_request

mesh = Mesh.from_env()
app = Flask(__name__)


@app.get("/")
def hello() -> Any:
    context = current_request()
    return jsonify(
        {"app": "wsgi", "service": mesh.service, "trace": context.trace_id if context else None}
    )


app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)  # type: ignore[method-assign]
