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
from nsbox import Judge, NsSandbox

from . import _mcp
from ._admission import MemoryBudget, Slots
from ._auth import ANONYMOUS, Principal, RateLimit, Tokens
from ._errors import HANDLED, Refusal, answer, retry_after
from ._fusion import OneShot
from ._limits import BodyLimit
from ._log import RequestLog
from ._metrics import Metrics
from ._models import SandboxRequest
from ._options import ServeOptions, is_loopback
from ._sessions import Session, Sessions


class Server:
    """The state of one server: what its routes share."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.tokens = Tokens.load(options.token_file) if options.token_file else None
        self.rate = RateLimit(options.requests_per_minute)
        self.metrics = Metrics()
        self.log = RequestLog(options.audit_log)
        self.budget = MemoryBudget(options.memory_budget)
        # One-shot runs and sessions in threads of their own: neither can take the other's.
        # A one-shot request holds a thread only while it holds a worker's slot; a session
        # holds at most one (its calls go one at a time), and its start or end one more.
        self.executor = ThreadPoolExecutor(options.workers + 2, thread_name_prefix="nsbox-serve")
        self.sessions = Sessions(
            options, self.budget, ThreadPoolExecutor(2 * options.max_sandboxes + 2, thread_name_prefix="nsbox-session")
        )
        self.slots: Slots | None = None
        self.oneshot: OneShot | None = None
        self.mcp = _mcp.service(self) if options.mcp else None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        options = self.options
        self.slots = Slots(options.workers, options.queue)
        spec = NsSandbox(
            memory=options.max_memory,
            timeout=options.max_timeout,
            output_limit=options.output_limit,
            audit_log=options.audit_log,
        ).spec
        held = options.workers * options.max_memory + options.pool_size * options.default_memory
        self.budget.take(held, "the run_code workers and the pool")
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
            async with self.mcp.running() if self.mcp is not None else contextlib.nullcontext():
                yield
        finally:
            await self.sessions.close()
            await self.call(judge.close)  # ends what still runs: the grace is over
            self.budget.give(held)
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
        if self.tokens is None and not _from_this_host(request):
            raise Refusal(
                403, "host", "without tokens this server answers only this host's loopback clients", where="header"
            )
        who = ANONYMOUS if self.tokens is None else self.tokens.identify(request.headers.get("authorization"))
        if who is None:
            raise Refusal(
                401, "authorization", "a valid bearer token is needed", {"WWW-Authenticate": "Bearer"}, "header"
            )
        request.state.principal = who.name
        wait = self.rate.retry_after(who)
        if wait is not None:
            raise Refusal(
                429,
                None,
                f"{who.name} sent its {self.rate.per_minute} requests of this minute",
                retry_after(wait),
                "header",
            )
        return who

    def session(self, who: Principal, session_id: str) -> Session:
        session = self.sessions.get(who, session_id)
        if session is None:
            raise Refusal(404, "id", f"no session {session_id!r} of this token")
        return session


def _from_this_host(request: Request) -> bool:
    """A loopback client, naming a loopback host: not another machine (an app embedded in a
    server listening more widely) and not a web page's request through a rebound DNS name."""
    client = request.client.host if request.client is not None else ""
    named = request.headers.get("host", "")
    if named.startswith("["):  # [::1]:8080
        host = named[1 : named.find("]")]
    else:
        host = named.rsplit(":", 1)[0] if named.count(":") == 1 else named
    return is_loopback(client) and (is_loopback(host) or host == "")


def create_app(options: ServeOptions) -> FastAPI:
    server = Server(options)
    app = FastAPI(title="nsbox", version=nsbox.__version__, lifespan=server.lifespan)
    app.state.server = server
    _errors_of(app)
    app.add_middleware(BodyLimit, limit=options.max_body)
    _authenticated(app, server)  # before BodyLimit or a route reads a byte of the body
    _access_log(app, server)  # the outer: it logs BodyLimit's refusals too
    from . import _routes

    _routes.add(app, server)
    if server.mcp is not None:  # an ASGI app of its own (the MCP SDK's), behind the same middleware
        # Starlette routes to an ASGI app given as an endpoint that is neither function nor method.
        app.router.add_route("/mcp", server.mcp, ["GET", "POST", "DELETE"], include_in_schema=False)  # type: ignore[arg-type]
    return app


def _errors_of(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> Response:
        status, body, headers = answer(exc)
        detail = body["detail"][0]
        field = detail["loc"][1:]  # the log's reason names the field, as the answer does
        request.state.refusal = (f"{field[0]}: " if field else "") + str(detail["msg"])
        return JSONResponse(body, status, headers=headers)

    kinds: tuple[type[Exception], ...] = (Refusal, *HANDLED)
    for kind in kinds:
        app.add_exception_handler(kind, handler)


#: What needs no token.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _authenticated(app: FastAPI, server: Server) -> None:
    @app.middleware("http")
    async def authenticated(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path not in OPEN_PATHS:
            try:
                request.state.who = server.principal(request)
            except Refusal as exc:  # answered here: no route, no body read
                request.state.refusal = exc.message
                status, body, headers = answer(exc)
                return JSONResponse(body, status, headers=headers)
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
