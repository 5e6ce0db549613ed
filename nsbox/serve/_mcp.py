"""``nsbox serve --mcp``: the MCP tools (``nsbox.mcp``) at ``/mcp``, over Streamable HTTP.

The route is behind the server's auth like every other (a token; without a token file,
loopback clients naming a loopback Host only), and the tools take what the HTTP API takes:
each agent session is a sandbox of the server's default size (``--default-memory``,
``--default-timeout``), counted against the memory budget; ``run_code``'s programs take a
worker's slot in the same queue as ``/run_code``'s. A bound reached is a tool error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from nsbox import RunResult

from ._admission import Busy
from ._models import SandboxRequest

if TYPE_CHECKING:
    from nsbox.mcp._service import McpService

    from ._app import Server

_T = TypeVar("_T")
FLAGS = {
    "memory": "--default-memory",
    "timeout": "--default-timeout",
    "network": "none: nsbox serve's sandboxes have no network",
    "packages": "--wheels",
}


def service(server: Server) -> McpService:
    from nsbox.mcp import McpOptions
    from nsbox.mcp._service import McpService
    from nsbox.mcp._sessions import Refused

    options = server.options

    def refusing(call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except Busy as exc:
            raise Refused(exc.reason) from None

    async def run_program(program: dict[str, Any]) -> RunResult:
        try:
            async with server._slots().slot("run_code"):
                results: list[RunResult] = await server.call(server._oneshot().judge.run_code_many, [program])
        except Busy as exc:
            raise Refused(exc.reason) from None
        return results[0]

    return McpService(
        McpOptions(
            spec=SandboxRequest().sandbox(options).spec,
            idle_ttl=options.session_idle_ttl,
            max_sessions=options.max_sandboxes,
            sessions_per_owner=options.sessions_per_token,
            flags=FLAGS,
        ),
        http=True,
        run_program=run_program,
        admit=lambda memory: refusing(server.budget.take, memory, "an MCP session"),
        release=server.budget.give,
    )
