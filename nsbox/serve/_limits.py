"""BodyLimit: an ASGI middleware that refuses a request body past ``limit`` bytes (413).

A declared Content-Length past it is refused before a byte of the body is read; a body
sent without one (chunked) is counted as it arrives and refused when it passes the limit,
so the server never holds more than ``limit`` bytes of one request.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLong(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0
        started = False
        too_long = False

        async def counted() -> Message:
            nonlocal seen, too_long
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_long = True
                    raise _TooLong
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if too_long and not started:
                return  # the app's answer to a body it could not read (FastAPI's 400): ours instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLong):  # or FastAPI caught it and answered 400 (dropped above)
            await self.app(scope, counted, tracked)
        if too_long and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        detail: dict[str, Any] = {
            "detail": [{"loc": ["body"], "msg": f"the body is longer than {self.limit} bytes", "status": 413}]
        }
        body = json.dumps(detail).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
