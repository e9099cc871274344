"""An instance that is up but failing: every request gets 503 (retry tests under meshware serve).

meshware serve tests.broken_app:app --service ratings --port P
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def unavailable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("unavailable", status_code=503)


app = Starlette(routes=[Route("/{path:path}", unavailable)])
