"""The routes of ``nsbox serve``: one-shot runs, sessions, operations.

One-shot runs (``/run_code``, ``/v1/run_code_batch``) wait for workers in a bounded queue; a
session's calls run one at a time in the sessions' threads, the session active (not idle)
meanwhile. ``Accept: text/event-stream`` makes a run or a cell's answer events (``_stream``).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from nsbox import ExecutionFailed, RunFailed, SandboxError
from nsbox._values import parse_size

from ._app import Server, sse
from ._auth import Principal
from ._errors import Refusal
from ._fusion import RunCodeBatch, RunCodeRequest, RunCodeResponse, check_names
from ._models import (
    ExecuteRequest,
    JudgeRequest,
    PackagesRequest,
    RunCodeInSession,
    RunRequest,
    SandboxRequest,
    capped_timeout,
)
from ._sessions import Session
from ._stream import Sinks, outcome, streamed


def add(app: FastAPI, server: Server) -> None:
    options = server.options

    def principal(request: Request) -> Principal:
        who: Principal = request.state.who  # set by _app._authenticated
        return who

    Who = Depends(principal)

    # -- operations ------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "sessions": len(server.sessions), "queue": server._slots().waiting}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(who: Principal = Who) -> str:
        return server.metrics.render()

    # -- one-shot ----------------------------------------------------------------------------------
    @app.post("/run_code", response_model=RunCodeResponse)
    async def run_code(body: RunCodeRequest, who: Principal = Who) -> RunCodeResponse:
        """SandboxFusion's /run_code (see the README for the mapping)."""
        return (await _one_shot(server, [body], "run_code"))[0]

    @app.post("/v1/run_code_batch")
    async def run_code_batch(body: RunCodeBatch, who: Principal = Who) -> dict[str, list[RunCodeResponse]]:
        if len(body.requests) > options.max_batch:
            raise Refusal(422, "requests", f"{len(body.requests)} programs; at most {options.max_batch} in one batch")
        return {"results": await _one_shot(server, body.requests, "run_code_batch")}

    # -- sessions --------------------------------------------------------------------------------
    @app.post("/v1/sandboxes", status_code=201)
    async def create(body: SandboxRequest, who: Principal = Who) -> dict[str, Any]:
        session = await server.sessions.create(who, body.sandbox(options), body.rootfs)
        return session.describe(options)

    @app.get("/v1/sandboxes")
    async def listing(who: Principal = Who) -> dict[str, Any]:
        return {"sandboxes": [s.describe(options) for s in server.sessions.owned(who)]}

    @app.get("/v1/sandboxes/{session_id}")
    async def describe(session_id: str, who: Principal = Who) -> dict[str, Any]:
        return server.session(who, session_id).describe(options)

    @app.delete("/v1/sandboxes/{session_id}", status_code=204)
    async def destroy(session_id: str, who: Principal = Who) -> Response:
        await server.sessions.destroy(server.session(who, session_id))
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{session_id}/run")
    async def run(session_id: str, body: RunRequest, request: Request, who: Principal = Who) -> Any:
        kwargs: dict[str, Any] = {"capture_output": True, "cwd": body.cwd, "env": body.env, "input": body.stdin}
        if body.timeout is not None:
            kwargs["timeout"] = capped_timeout(body.timeout, options)
        session = server.session(who, session_id)
        if _wants_events(request):  # its output as it comes

            def run_streamed(sinks: Sinks) -> Any:
                on_stdout, on_stderr, _ = sinks
                return _in(
                    server,
                    session,
                    "run",
                    lambda s: s.run(body.args, on_stdout=on_stdout, on_stderr=on_stderr, **kwargs).to_dict("base64"),
                )

            return sse(streamed(run_streamed))
        return await _answer(
            _in(server, session, "run", lambda s: s.run(body.args, **kwargs).to_dict("base64")), request
        )

    @app.post("/v1/sandboxes/{session_id}/execute")
    async def execute(session_id: str, body: ExecuteRequest, request: Request, who: Principal = Who) -> Any:
        kwargs: dict[str, Any] = {}
        if body.timeout is not None:
            kwargs["timeout"] = capped_timeout(body.timeout, options)
        session = server.session(who, session_id)

        if _wants_events(request) and not (body.want_result or body.inputs is not None):

            def cell(sinks: Sinks) -> Any:
                on_stdout, on_stderr, on_result = sinks
                return _in(
                    server,
                    session,
                    "execute",
                    lambda s: s.execute_code(
                        body.code, on_stdout=on_stdout, on_stderr=on_stderr, on_result=on_result, **kwargs
                    ).to_dict(),
                )

            return sse(streamed(cell))

        def executed(sandbox: Any) -> dict[str, Any]:
            if not (body.want_result or body.inputs is not None):
                return dict(sandbox.execute_code(body.code, **kwargs).to_dict())
            try:
                return {"result": sandbox.execute_ai_code(body.code, body.inputs, **kwargs)}
            except ExecutionFailed as exc:
                return {"failed": exc.result.to_dict()}

        return await _answer(_in(server, session, "execute", executed), request)

    @app.post("/v1/sandboxes/{session_id}/run_code")
    async def run_code_in(session_id: str, body: RunCodeInSession, who: Principal = Who) -> Any:
        kwargs: dict[str, Any] = {"language": body.language}
        if body.timeout is not None:
            kwargs["timeout"] = capped_timeout(body.timeout, options)
        if body.memory is not None:
            kwargs["memory"] = _capped_memory(body.memory, options.max_memory)
        check_names(body.files or {}, "files")
        try:
            kwargs["stdin"] = None if body.stdin is None else base64.b64decode(body.stdin, validate=True)
        except ValueError:
            raise Refusal(422, "stdin", "stdin is base64") from None
        try:
            kwargs["files"] = {n: base64.b64decode(v, validate=True) for n, v in (body.files or {}).items()}
        except ValueError:
            raise Refusal(422, "files", "the files' contents are base64") from None
        session = server.session(who, session_id)
        return await _in(server, session, "run_code", lambda s: s.run_code(body.code, **kwargs).to_dict("base64"))

    @app.post("/v1/sandboxes/{session_id}/judge")
    async def judge_in(session_id: str, body: JudgeRequest, who: Principal = Who) -> Any:
        kwargs = body.model_dump(exclude={"code", "tests"}, exclude_none=True)
        for field in ("timeout", "compile_timeout"):
            if field in kwargs:
                kwargs[field] = capped_timeout(kwargs[field], options, field)
        if "memory" in kwargs:
            kwargs["memory"] = _capped_memory(kwargs["memory"], options.max_memory)
        session = server.session(who, session_id)

        def judged(sandbox: Any) -> dict[str, Any]:
            result = sandbox.judge(body.code, body.tests, **kwargs)
            return {
                "verdict": result.verdict.value,
                "error": result.error,
                "compile": None if result.compile is None else result.compile.to_dict("base64"),
                "tests": [
                    {"index": t.index, "verdict": t.verdict.value, "run": t.run.to_dict("base64")} for t in result.tests
                ],
            }

        return await _in(server, session, "judge", judged)

    @app.post("/v1/sandboxes/{session_id}/packages")
    async def packages(session_id: str, body: PackagesRequest, who: Principal = Who) -> dict[str, Any]:
        kwargs = {} if body.timeout is None else {"timeout": capped_timeout(body.timeout, options)}
        session = server.session(who, session_id)

        def install(sandbox: Any) -> dict[str, Any]:
            try:
                return dict(sandbox.install_packages(body.packages, **kwargs).to_dict("base64"))
            except RunFailed as exc:  # pip failed: its result says how
                return dict(exc.result.to_dict("base64"))

        result: dict[str, Any] = await _in(server, session, "packages", install)
        return result

    @app.get("/v1/sandboxes/{session_id}/files")
    async def files(session_id: str, path: str = ".", who: Principal = Who) -> dict[str, Any]:
        session = server.session(who, session_id)
        entries = await _in(server, session, "files", lambda s: s.list_files(path))
        return {"entries": [{"name": e.name, "type": e.type, "size": e.size, "mode": e.mode} for e in entries]}

    @app.get("/v1/sandboxes/{session_id}/files/{path:path}")
    async def read(session_id: str, path: str, who: Principal = Who) -> Response:
        session = server.session(who, session_id)
        data = await _in(server, session, "files", lambda s: s.read_file(path))
        return Response(data, media_type="application/octet-stream")

    @app.put("/v1/sandboxes/{session_id}/files/{path:path}", status_code=204)
    async def write(session_id: str, path: str, request: Request, mode: int = 0o644, who: Principal = Who) -> Response:
        if not 0 <= mode <= 0o777:
            raise Refusal(422, "mode", f"{mode:o}: permission bits only (0 to 0777)")
        session = server.session(who, session_id)
        data = await request.body()
        await _in(server, session, "files", lambda s: s.write_file(path, data, mode=mode))
        return Response(status_code=204)

    @app.delete("/v1/sandboxes/{session_id}/files/{path:path}", status_code=204)
    async def remove(session_id: str, path: str, recursive: bool = False, who: Principal = Who) -> Response:
        session = server.session(who, session_id)
        await _in(server, session, "files", lambda s: s.remove(path, recursive=recursive))
        return Response(status_code=204)


async def _one_shot(server: Server, requests: list[RunCodeRequest], endpoint: str) -> list[RunCodeResponse]:
    oneshot = server._oneshot()
    for body in requests:
        oneshot.check(body)
    started = time.monotonic()
    async with server._slots().slot(endpoint, len(requests)):  # a batch takes the workers it uses
        answers: list[RunCodeResponse] = await server.call(oneshot.answer_many, requests)
    for answer in answers:
        server.metrics.ran(endpoint, answer.status, time.monotonic() - started)
    return answers


async def _in(server: Server, session: Session, endpoint: str, call: Any) -> Any:
    """``call(sandbox)`` in a thread, the session active meanwhile; a dead sandbox ends the session (410)."""
    started = time.monotonic()
    try:
        result = await server.sessions.call_in(session, call)
    except SandboxError as exc:
        if not session.sandbox.closed:  # refused, the sandbox goes on (run_code in own mode)
            raise Refusal(409, None, str(exc)) from None
        await server.sessions.destroy(session)
        raise Refusal(410, "id", f"the session's sandbox ended: {exc}") from None
    status = result.get("status", "ok") if isinstance(result, dict) else "ok"
    server.metrics.ran(endpoint, str(status), time.monotonic() - started)
    return result


async def _answer(call: Any, request: Request) -> Any:
    """The answer as JSON, or (``Accept: text/event-stream``, for a call without output of its
    own to stream: execute_ai_code's) as the events ``started`` and ``result`` (or ``error``)."""
    if not _wants_events(request):
        return await call

    async def events() -> AsyncIterator[tuple[str, Any]]:
        task = asyncio.ensure_future(call)
        yield "started", {}
        await asyncio.wait({task})
        yield outcome(task)

    return sse(events())


def _capped_memory(value: int | str, most: int) -> int:
    memory = parse_size(value, "memory")
    if not 0 < memory <= most:
        raise Refusal(422, "memory", f"{memory} bytes; this server takes 1 up to {most}")
    return memory


def _wants_events(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")
