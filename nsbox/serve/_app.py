"""The HTTP application of ``nsbox serve`` (FastAPI): routes, auth, admission, errors.

Every route but ``/healthz`` and the schema needs a token (when the server has a token
file). A request is answered with a result, or refused with a 4xx that names the field at
fault: 401 (no or wrong token), 404 (no such session for this token, no such file), 413
(body too long), 422 (malformed JSON, a wrong type, an unknown field, a value past the
server's bounds, a path that leaves the workspace or crosses a symlink), 429 (a quota, the
queue or the memory budget is full: with Retry-After). The engine's errors are mapped in
``_errors_of``; nothing here adds isolation or weakens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

import nsbox
from nsbox import Judge, NsSandbox, SecurityError, SpecError

from ._admission import Busy, MemoryBudget, Slots
from ._auth import ANONYMOUS, Principal, RateLimit, Tokens
from ._fusion import OneShot, Refused
from ._limits import BodyLimit
from ._log import RequestLog
from ._metrics import Metrics
from ._models import SandboxRequest
from ._options import ServeOptions
from ._sessions import Session, Sessions


class Refusal(Exception):
    """An HTTP refusal: status, the field at fault (or None) and why."""

    def __init__(self, status: int, field: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}


class Server:
    """The state of one server: what its routes share."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.tokens = Tokens.load(options.token_file) if options.token_file else None
        self.rate = RateLimit(options.requests_per_minute)
        self.metrics = Metrics()
        self.log = RequestLog(options.audit_log)
        self.budget = MemoryBudget(options.memory_budget)
        self.executor = ThreadPoolExecutor(
            options.max_sandboxes + options.workers + 4, thread_name_prefix="nsbox-serve"
        )
        self.sessions = Sessions(options, self.budget, self.executor)
        self.slots: Slots | None = None
        self.oneshot: OneShot | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        options = self.options
        self.slots = Slots(options.workers, options.queue)
        spec = NsSandbox(memory=options.max_memory, timeout=options.max_timeout, audit_log=options.audit_log).spec
        self.budget.take(options.workers * options.max_memory, "the run_code workers")
        judge = Judge(options.workers, spec=spec)
        self.oneshot = OneShot(options, judge, self.budget)
        await self.sessions.start(SandboxRequest().sandbox(options).spec)
        self.metrics.gauge("nsbox_sessions", "Live sessions.", lambda: len(self.sessions))
        self.metrics.gauge("nsbox_queue_depth", "One-shot requests waiting.", lambda: self._slots().waiting)
        self.metrics.gauge("nsbox_running", "One-shot requests running.", lambda: self._slots().running)
        self.metrics.gauge("nsbox_memory_held_bytes", "Memory limits of the sandboxes held.", lambda: self.budget.used)
        await self.call(judge.run_code_many, ["pass"] * options.workers)  # the workers warm before the first request
        self.log.write("started", host=options.host, port=options.port, workers=options.workers)
        try:
            yield
        finally:
            await self.sessions.close()
            await self.call(judge.close)
            self.budget.give(options.workers * options.max_memory)
            self.executor.shutdown(wait=False)
            self.log.write("stopped")
            self.log.close()

    def _slots(self) -> Slots:
        if self.slots is None:
            raise RuntimeError("the server has not started")  # the lifespan sets it before any request
        return self.slots

    def _oneshot(self) -> OneShot:
        if self.oneshot is None:
            raise RuntimeError("the server has not started")
        return self.oneshot

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: function(*args, **kwargs))

    # -- who asks ------------------------------------------------------------------------------
    def principal(self, request: Request) -> Principal:
        who = ANONYMOUS if self.tokens is None else self.tokens.identify(request.headers.get("authorization"))
        if who is None:
            raise Refusal(401, "authorization", "a valid bearer token is needed", {"WWW-Authenticate": "Bearer"})
        request.state.principal = who.name
        wait = self.rate.retry_after(who)
        if wait is not None:
            raise Refusal(
                429, None, f"{who.name} sent its {self.rate.per_minute} requests of this minute", _retry(wait)
            )
        return who

    def session(self, who: Principal, session_id: str) -> Session:
        session = self.sessions.get(who, session_id)
        if session is None:
            raise Refusal(404, "id", f"no session {session_id!r} of this token")
        return session


def _retry(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


def create_app(options: ServeOptions) -> FastAPI:
    server = Server(options)
    app = FastAPI(title="nsbox", version=nsbox.__version__, lifespan=server.lifespan)
    app.state.server = server
    _errors_of(app, server)
    app.add_middleware(BodyLimit, limit=options.max_body)
    _authenticated(app, server)  # before BodyLimit or a route reads a byte of the body
    _access_log(app, server)  # the outer: it logs BodyLimit's refusals too
    from . import _routes

    _routes.add(app, server)
    return app


def _errors_of(app: FastAPI, server: Server) -> None:
    def body(status: int, field: str | None, message: str, error: Exception | None = None) -> dict[str, Any]:
        where = "path" if field == "path" else "body"  # a file's path is in the URL
        detail: dict[str, Any] = {"loc": [where, field] if field else [where], "msg": message, "status": status}
        if error is not None:  # what RemoteSandbox raises again: the engine's error, or the OSError's errno
            detail["error"] = type(error).__name__
            if isinstance(error, SpecError | Refused):
                detail["msg"] = error.message
            if isinstance(error, OSError):
                detail["errno"], detail["msg"] = error.errno, error.strerror or message
        return {"detail": [detail]}

    async def refusal(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, Refusal):  # registered for Refusal only
            raise exc
        request.state.refusal = exc.message
        return JSONResponse(body(exc.status, exc.field, exc.message), exc.status, headers=exc.headers)

    def mapped(status: int, field: Callable[[Any], str | None]) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(request: Request, exc: Exception) -> Response:
            request.state.refusal = str(exc)
            headers = _retry(exc.retry_after) if isinstance(exc, Busy) else {}
            return JSONResponse(body(status, field(exc), str(exc), exc), status, headers=headers)

        return handler

    app.add_exception_handler(Refusal, refusal)
    app.add_exception_handler(Refused, mapped(422, lambda e: e.field))
    app.add_exception_handler(SpecError, mapped(422, lambda e: e.options[0].split(" (")[0] if e.options else None))
    app.add_exception_handler(SecurityError, mapped(422, lambda e: "path"))
    app.add_exception_handler(FileNotFoundError, mapped(404, lambda e: "path"))
    app.add_exception_handler(OSError, mapped(409, lambda e: "path"))
    app.add_exception_handler(Busy, mapped(429, lambda e: None))


#: What needs no token.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _authenticated(app: FastAPI, server: Server) -> None:
    @app.middleware("http")
    async def authenticated(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path not in OPEN_PATHS:
            try:
                request.state.who = server.principal(request)
            except Refusal as exc:
                request.state.refusal = exc.message
                loc = ["header", exc.field] if exc.field else ["header"]
                detail = {"detail": [{"loc": loc, "msg": exc.message, "status": exc.status}]}
                return JSONResponse(detail, exc.status, headers=exc.headers)
        return await call_next(request)


def _access_log(app: FastAPI, server: Server) -> None:
    @app.middleware("http")
    async def logged(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        status = response.status_code
        if status >= 400:
            server.metrics.refused(status)
        server.log.write(
            "refused" if status >= 400 else "request",
            token=getattr(request.state, "principal", None),
            method=request.method,
            path=request.url.path,
            status=status,
            seconds=round(time.monotonic() - started, 6),
            **({"why": request.state.refusal} if getattr(request.state, "refusal", None) else {}),
        )
        return response


def sse(events: AsyncIterator[tuple[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        async for event, data in events:
            yield f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
