"""``POST /run_code``: SandboxFusion's request and response, answered by judge mode.

An existing SandboxFusion client (verl's reward function sends one request per test case)
works with only its URL changed. The mapping:

- ``code``, ``stdin``, ``language`` (python, bash, c, cpp: the languages with a toolchain in
  the root; any other is answered ``SandboxError`` naming the ones there are);
- ``run_timeout`` is the program's timeout; ``compile_timeout`` the compiler's (c, cpp);
  each at most the server's maximum timeout;
- ``memory_limit_MB`` (-1 or 0: the server's default) is the program's own memory limit
  (run_code's ``memory``), at most the server's maximum memory;
- ``files`` (name -> base64) are written beside the program, by relative names;
- ``fetch_files``: names read back after the run, answered base64 in ``files``. Programs
  with ``fetch_files`` run in a fresh sandbox of their own (run_code's sweep removes what a
  program leaves), python and bash only.

The response: ``status`` Success (ran and exited 0), Failed (did not compile, or exited
otherwise, or was killed: its ``run_result`` says how) or SandboxError (nsbox could not run
it; ``message`` says why); ``compile_result`` for c and cpp; each result's ``status`` is
Finished, TimeLimitExceeded, or Error (nsbox's own failure), with ``execution_time``
(seconds), ``return_code``, ``stdout`` and ``stderr`` (UTF-8, undecodable bytes replaced).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import posixpath
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nsbox import Judge, NsboxError, NsSandbox, RunResult, SecurityError, SpecError, Status

from ._admission import MemoryBudget
from ._errors import Refused
from ._models import capped_timeout
from ._options import MiB, ServeOptions

#: What the server runs (a toolchain in the default root for each).
LANGUAGES = ("python", "bash", "c", "cpp")
COMPILED = ("c", "cpp")
#: Names in fetch_files, at most (what they fetch together is at most the server's --max-body).
MAX_FETCH = 64
#: Where a fetch_files program runs, and its source's name there per language.
SOURCES = {"python": ("python3", "main.py"), "bash": ("bash", "main.sh")}


class RunCodeRequest(BaseModel):
    """SandboxFusion's RunCodeRequest."""

    model_config = ConfigDict(extra="forbid")
    code: str
    language: str = "python"
    stdin: str | None = None
    compile_timeout: float = 10.0
    run_timeout: float = 10.0
    memory_limit_MB: int = -1
    files: dict[str, str | None] = Field(default_factory=dict)
    fetch_files: list[str] = Field(default_factory=list)


class RunCodeBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[RunCodeRequest]


class CommandRunResult(BaseModel):
    status: str  #: Finished, Error, TimeLimitExceeded
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    status: str  #: Success, Failed, SandboxError
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


def check_names(names: Iterable[str], field: str) -> None:
    """Refused unless each name is relative to a program's directory and stays inside it."""
    for name in names:
        clean = posixpath.normpath(name) if name and "\0" not in name else ""
        if not clean or clean.startswith(("/", "../")) or clean in (".", ".."):
            raise Refused(field, f"{name!r}: a name relative to the program's directory, inside it")


def sandbox_error(message: str) -> RunCodeResponse:
    return RunCodeResponse(status="SandboxError", message=message)


class OneShot:
    """Runs SandboxFusion requests on a Judge's sandboxes (``workers`` of them)."""

    def __init__(self, options: ServeOptions, judge: Judge, budget: MemoryBudget) -> None:
        self.options = options
        self.judge = judge
        self.budget = budget

    def check(self, request: RunCodeRequest) -> None:
        """Refused for a field past the server's bounds (before anything runs)."""
        if len(request.fetch_files) > MAX_FETCH:
            raise Refused("fetch_files", f"{len(request.fetch_files)} names; at most {MAX_FETCH}")
        for field in ("run_timeout", "compile_timeout"):
            capped_timeout(getattr(request, field), self.options, field)
        if request.memory_limit_MB << 20 > self.options.max_memory:
            raise Refused("memory_limit_MB", f"{request.memory_limit_MB} MB; at most {self.options.max_memory // MiB}")
        check_names(request.files, "files")
        check_names(request.fetch_files, "fetch_files")
        for name, value in request.files.items():
            try:
                base64.b64decode(value or "", validate=True)
            except (binascii.Error, ValueError):
                raise Refused("files", f"{name!r}: its content is not base64") from None

    def answer_many(self, requests: list[RunCodeRequest]) -> list[RunCodeResponse]:
        """Each request's response, in order (run a workers' worth at a time)."""
        answers: list[RunCodeResponse | None] = [None] * len(requests)
        programs: list[tuple[int, dict[str, Any]]] = []
        submissions: list[tuple[int, dict[str, Any]]] = []
        for i, request in enumerate(requests):
            if request.language not in LANGUAGES:
                answers[i] = sandbox_error(
                    f"language {request.language!r} is not supported here: nsbox runs {', '.join(LANGUAGES)} "
                    "(the toolchains in its root)"
                )
            elif request.fetch_files:
                try:
                    answers[i] = self._in_a_sandbox_of_its_own(request)
                except (NsboxError, OSError) as exc:  # this program's: the others' answers stand
                    answers[i] = sandbox_error(f"{type(exc).__name__}: {exc}")
            elif request.language in COMPILED:
                if request.files:
                    answers[i] = sandbox_error("files beside a c or cpp program are not supported here")
                else:
                    submissions.append((i, self._submission(request)))
            else:
                programs.append((i, self._program(request)))
        for (i, _), run in zip(programs, self.judge.run_code_many([p for _, p in programs]), strict=True):
            answers[i] = _response(None, run)
        for (i, _), judged in zip(submissions, self.judge.judge_many([s for _, s in submissions]), strict=True):
            test = judged.tests[0].run if judged.tests else None
            if judged.compile is None and test is None:
                answers[i] = sandbox_error(judged.error or "the program did not run")
            else:
                answers[i] = _response(judged.compile, test)
        return [a if a is not None else sandbox_error("not run") for a in answers]

    def _memory(self, request: RunCodeRequest) -> int:
        return request.memory_limit_MB << 20 if request.memory_limit_MB > 0 else self.options.default_memory

    def _program(self, request: RunCodeRequest) -> dict[str, Any]:
        program: dict[str, Any] = {
            "code": request.code,
            "language": request.language,
            "stdin": request.stdin,
            "timeout": request.run_timeout,
            "memory": self._memory(request),
        }
        if request.files:
            program["files"] = {name: base64.b64decode(value or "") for name, value in request.files.items()}
        return program

    def _submission(self, request: RunCodeRequest) -> dict[str, Any]:
        return {
            "code": request.code,
            "language": request.language,
            "tests": [{"input": request.stdin or "", "output": ""}],
            "timeout": request.run_timeout,
            "compile_timeout": request.compile_timeout,
            "memory": self._memory(request),
        }

    def _in_a_sandbox_of_its_own(self, request: RunCodeRequest) -> RunCodeResponse:
        if request.language not in SOURCES:
            return sandbox_error(f"fetch_files is supported for {', '.join(SOURCES)} programs here")
        memory = self._memory(request)
        interpreter, source = SOURCES[request.language]
        with self.budget.held(memory, "a program with fetch_files"):
            spec = dataclasses.replace(
                self.judge.spec, limits=dataclasses.replace(self.judge.spec.limits, memory=memory)
            )
            with NsSandbox(spec) as sandbox:
                for name, value in request.files.items():
                    sandbox.write_file(name, base64.b64decode(value or ""))
                sandbox.write_file(source, request.code)
                run = sandbox.run(
                    [interpreter, source], input=request.stdin or "", capture_output=True, timeout=request.run_timeout
                )
                fetched: dict[str, str] = {}
                room = self.options.max_body  # what comes back is bounded as what goes in
                for name in dict.fromkeys(posixpath.normpath(n) for n in request.fetch_files):
                    try:
                        data = sandbox.read_file(name)
                    except (OSError, SpecError, SecurityError):
                        continue  # not there, or not a regular file in the workspace: not fetched
                    if len(data) > room:
                        break  # past the bound: the rest are not fetched
                    room -= len(data)
                    fetched[name] = base64.b64encode(data).decode("ascii")
        response = _response(None, run)
        response.files = fetched
        return response


def _response(compiled: RunResult | None, run: RunResult | None) -> RunCodeResponse:
    """A compilation that failed is Failed; a run nsbox could not make (status error, not the
    program's own failure) is SandboxError; a run is Success if it exited 0, its output cut
    at the limit or not (as SandboxFusion, which truncates too)."""
    if run is not None and run.status is Status.ERROR and (compiled is None or compiled.ok):
        return RunCodeResponse(status="SandboxError", message=run.error or "nsbox could not run the program")
    compile_result = None if compiled is None else _command(compiled)
    if compiled is not None and not compiled.ok:
        return RunCodeResponse(status="Failed", message=compiled.error or "", compile_result=compile_result)
    run_result = None if run is None else _command(run)
    ok = run is not None and run.status in (Status.OK, Status.OUTPUT_LIMIT) and run.exit_code == 0
    return RunCodeResponse(
        status="Success" if ok else "Failed",
        message="" if run is None else run.error or "",
        compile_result=compile_result,
        run_result=run_result,
    )


def _command(run: RunResult) -> CommandRunResult:
    if run.status in (Status.TIMEOUT, Status.CPU_TIME):
        status = "TimeLimitExceeded"
    elif run.status is Status.ERROR and not (run.error or "").startswith("compilation failed"):
        status = "Error"
    else:
        status = "Finished"
    return CommandRunResult(
        status=status,
        execution_time=round(run.wall_s, 6),
        return_code=run.exit_code,
        stdout=None if run.stdout is None else run.stdout.decode("utf-8", "replace"),
        stderr=None if run.stderr is None else run.stderr.decode("utf-8", "replace"),
    )
