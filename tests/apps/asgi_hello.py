"""A plain Starlette app with no mesh code: ``meshware serve`` joins it to the mesh."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshware import current_request


async def hello(request: Request) -> JSONResponse:
    context = current_request()
    return JSONResponse({"app": "asgi", "trace": context.trace_id if context else None})


app = Starlette(routes=[Route("/", hello)])
