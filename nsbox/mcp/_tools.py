"""The tools an agent sees: their descriptions (with the server's limits in them), their
arguments, and what each does with the engine's public API.

``run_code`` is one-shot (a fresh process of judge mode: nothing persists); the others act
on the client's session (``_sessions``): a sandbox made on first use, where variables of
``execute_python``, files and installed packages persist until ``reset_session``, the end
of the client's MCP session, or the idle TTL. An argument can shorten a call's timeout,
never raise a limit; every failure is a tool error (``isError``) saying what went wrong.

(No ``from __future__ import annotations`` here: the SDK reads the tools' annotations,
which name local values, when they are registered.)
"""

import base64
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from nsbox import NsboxError, NsSandbox, RunFailed, RunResult, SandboxError, SecurityError

from . import _reply
from ._options import McpOptions
from ._sessions import AgentSessions, Key, Refused

#: The languages of run_code (a toolchain for each in every root).
LANGUAGES = ("python", "bash")
#: Bytes of a binary file read_file shows (base64), at most.
BINARY_SHOWN = 48 * 1024
#: A program of run_code: run_code's arguments (code, language, stdin, timeout, memory).
RunProgram = Callable[[dict[str, Any]], Awaitable[RunResult]]
#: The client's session key of a call (raises ToolError where a call has no session).
KeyOf = Callable[[Context], Key]


class Tools:
    """What the tools of one server share."""

    def __init__(self, options: McpOptions, sessions: AgentSessions, run_program: RunProgram, key_of: KeyOf) -> None:
        self.options = options
        self.sessions = sessions
        self.run_program = run_program
        self.key_of = key_of

    def timeout(self, asked: float | None) -> float:
        limit = self.options.timeout
        if asked is None:
            return limit
        if not asked > 0:
            raise ToolError(f"timeout {asked!r}: a number of seconds above 0")
        if asked > limit:
            raise ToolError(
                f"timeout {asked:g} s is above this server's limit of {limit:g} s (set by its operator: "
                f"{self.options.flags['timeout']}); a tool call cannot raise it"
            )
        return asked

    async def in_session(self, ctx: Context, call: Callable[[NsSandbox], Any]) -> tuple[Any, str | None]:
        return await self.sessions.call(self.key_of(ctx), call)


@contextlib.asynccontextmanager
async def told() -> AsyncIterator[None]:
    """The engine's and the server's refusals, as tool errors that say why."""
    try:
        yield
    except SecurityError as exc:
        raise ToolError(f"refused: {exc}") from None
    except RunFailed as exc:
        result = exc.result
        stderr = result.stderr.decode("utf-8", "replace") if isinstance(result, RunResult) and result.stderr else ""
        raise ToolError(f"failed: {exc}\n{_reply.cut(stderr)}".rstrip()) from None
    except SandboxError as exc:
        raise ToolError(f"the sandbox failed: {exc}") from None
    except (NsboxError, Refused) as exc:  # SpecError among them: its message names the argument
        raise ToolError(str(exc)) from None


def add(server: MCPServer, tools: Tools) -> dict[str, frozenset[str]]:
    """Registers the tools; returns their argument names, by tool (what the guard lets through)."""
    options = tools.options
    limits = options.limits_text()
    session_text = (
        f"It runs in this client's own sandbox, made on first use and kept for this MCP session (destroyed when the "
        f"client goes away or after {options.idle_ttl:g} s unused)."
    )
    timeout_field = Field(
        default=None, description=f"seconds this call may take, at most {options.timeout:g} (the server's limit)"
    )
    reply_text = f"Each of stdout and stderr is cut at {_reply.REPLY_LIMIT} characters in the reply."

    async def run_code(
        code: Annotated[str, Field(description="the program's source")],
        language: Annotated[str, Field(description="python or bash")] = "python",
        stdin: Annotated[str, Field(description="the program's standard input")] = "",
    ) -> CallToolResult:
        if language not in LANGUAGES:
            raise ToolError(f"language {language!r}: this server runs {' or '.join(LANGUAGES)}")
        async with told():
            result = await tools.run_program(
                {
                    "code": code,
                    "language": language,
                    "stdin": stdin or None,
                    "timeout": options.timeout,
                    "memory": options.spec.limits.memory,
                }
            )
        return _reply.of_run(result, options)

    async def execute_python(
        code: Annotated[str, Field(description="Python source; a last expression's repr is returned as the value")],
        ctx: Context,
        timeout: Annotated[float | None, timeout_field] = None,
    ) -> CallToolResult:
        seconds = tools.timeout(timeout)
        async with told():
            result, note = await tools.in_session(ctx, lambda s: s.execute_code(code, timeout=seconds))
        return _reply.of_cell(result, options, note, seconds)

    async def run_command(
        command: Annotated[str, Field(description="a shell command line (sh -c), run in /workspace")],
        ctx: Context,
        timeout: Annotated[float | None, timeout_field] = None,
    ) -> CallToolResult:
        seconds = tools.timeout(timeout)
        async with told():
            result, note = await tools.in_session(
                ctx, lambda s: s.run(["sh", "-c", command], capture_output=True, timeout=seconds)
            )
        return _reply.of_run(result, options, note, seconds)

    async def write_file(
        path: Annotated[str, Field(description="a path in /workspace (relative to it, or absolute under it)")],
        content: Annotated[str, Field(description="the file's text (UTF-8)")],
        ctx: Context,
    ) -> str:
        async with told():
            _, note = await tools.in_session(ctx, lambda s: s.write_file(path, content))
        return _noted(f"wrote {len(content.encode())} bytes to {path}", note)

    async def read_file(
        path: Annotated[str, Field(description="a path in /workspace")],
        ctx: Context,
    ) -> str:
        async with told():
            data, note = await tools.in_session(ctx, lambda s: s.read_file(path))
        try:
            shown = _reply.cut(data.decode("utf-8"))
        except UnicodeDecodeError:
            if len(data) > BINARY_SHOWN:
                raise ToolError(
                    f"{path} is binary ({len(data)} bytes): more than the {BINARY_SHOWN} bytes shown as base64"
                ) from None
            shown = f"(binary, {len(data)} bytes, base64)\n{base64.b64encode(data).decode()}"
        return _noted(shown, note)

    async def list_files(
        ctx: Context,
        path: Annotated[str, Field(description="a directory in /workspace")] = ".",
    ) -> str:
        async with told():
            entries, note = await tools.in_session(ctx, lambda s: s.list_files(path))
        # A name is the sandbox's: one with a tab or a newline must not forge a row.
        lines = [f"{e.type}\t{e.size}\t{e.name if e.name.isprintable() else repr(e.name)}" for e in entries]
        lines = lines or ["(empty)"]
        return _noted("type\tsize\tname\n" + "\n".join(lines), note)

    async def install_packages(
        packages: Annotated[list[str], Field(description="package names, e.g. ['numpy', 'requests==2.32.3']")],
        ctx: Context,
    ) -> str:
        if options.spec.wheels is None:
            raise ToolError(
                f"this server installs no packages: its operator gave it no wheelhouse ({options.flags['packages']})"
            )
        async with told():
            _, note = await tools.in_session(ctx, lambda s: s.install_packages(packages))
        return _noted(f"installed {', '.join(packages)}: importable in execute_python", note)

    async def reset_session(ctx: Context) -> str:
        ended = await tools.sessions.end(tools.key_of(ctx))
        return "the session's sandbox is destroyed; the next call makes a new one" if ended else "there was no session"

    described: dict[Callable[..., Awaitable[Any]], str] = {
        run_code: (
            "Run a program once, in a fresh process with nothing left from any other call (no variables, no files). "
            f"language: {' or '.join(LANGUAGES)}. Returns how it ended, its stdout and stderr. {reply_text} "
            f"Limits: {limits}."
        ),
        execute_python: (
            "Run Python code in this client's session, like a notebook cell: variables, imports and files persist "
            f"across calls. Returns stdout, stderr, the value of a last expression, and any exception. {session_text} "
            f"{reply_text} Limits: {limits}."
        ),
        run_command: (
            f"Run a shell command line in this client's session (its workspace, /workspace). {session_text} "
            f"{reply_text} Limits: {limits}."
        ),
        write_file: f"Write a text file in the session's /workspace (parents are made). {session_text}",
        read_file: (
            f"Read a file of the session's /workspace: text (cut at {_reply.REPLY_LIMIT} characters), or a binary "
            f"file of at most {BINARY_SHOWN} bytes as base64."
        ),
        list_files: "List a directory of the session's /workspace: type, size in bytes and name of each entry.",
        install_packages: (
            "Install Python packages into the session, from the server's own wheelhouse (only what it holds: "
            "there is no package index), for execute_python to import."
            + ("" if options.spec.wheels else " This server has no wheelhouse: the tool refuses.")
        ),
        reset_session: "Destroy this client's session (its variables, files and packages); the next call starts anew.",
    }
    names: dict[str, frozenset[str]] = {}
    for function, description in described.items():
        server.tool(description=description)(function)
        params = inspect.signature(function).parameters
        names[function.__name__] = frozenset(p for p in params if p != "ctx")
    return names


def _noted(body: str, note: str | None) -> str:
    return f"note: {note}\n{body}" if note else body
