"""``nsbox serve --mcp``: the MCP tools (``nsbox.mcp``) at ``/mcp``, over Streamable HTTP.

The route is behind the server's auth like every other (a token; without a token file,
loopback clients naming a loopback Host only). Each agent session is a sandbox of the
server's default size (``--default-memory``, ``--default-timeout``), counted against the
memory budget, with the session bounds of the HTTP API (``--max-sandboxes``,
``--sessions-per-token``, the idle TTL and the lifetime), counted apart from its sessions;
``run_code``'s programs take a worker's slot in the same queue as ``/run_code``'s. A bound
reached is a tool error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nsbox import RunResult

from ._admission import Busy
from ._models import SandboxRequest

if TYPE_CHECKING:
    from nsbox.mcp._service import McpService

    from ._app import Server

FLAGS = {
    "memory": "--default-memory",
    "timeout": "--default-timeout",
    "network": "none: nsbox serve's sandboxes have no network",
    "packages": "--wheels",
}


def service(server: Server) -> McpService:
    from nsbox.mcp import McpOptions
    from nsbox.mcp._service import McpService

    options = server.options

    async def run_program(program: dict[str, Any]) -> RunResult:
        with refused():
            async with server._slots().slot("run_code"):
                results: list[RunResult] = await server.call(server._oneshot().judge.run_code_many, [program])
        return results[0]

    def admit(memory: int) -> None:
        with refused():
            server.budget.take(memory, "an MCP session")

    return McpService(
        McpOptions(
            spec=SandboxRequest().sandbox(options).spec,
            idle_ttl=options.session_idle_ttl,
            lifetime=options.session_lifetime,
            max_sessions=options.max_sandboxes,
            sessions_per_owner=options.sessions_per_token,
            flags=FLAGS,
        ),
        http=True,
        run_program=run_program,
        admit=admit,
        release=server.budget.give,
    )


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """The server's bounds (Busy) as the tools' refusals: tool errors that say which."""
    from nsbox.mcp._sessions import Refused

    try:
        yield
    except Busy as exc:
        raise Refused(exc.reason) from None
