"""nsbox mcp: sandboxes as MCP tools for AI agents (the ``mcp`` extra: the official SDK, v2).

A layer above the engine: it uses only the engine's public API (``NsSandbox``, ``Judge``)
and adds policy (one session per MCP client session, an idle TTL, limits that no tool
argument can raise), never isolation. Two transports: stdio (``nsbox mcp``, one client per
process) and Streamable HTTP (``nsbox serve --mcp``, at ``/mcp`` behind the service's
tokens). Modules:

- ``_options``   McpOptions: the operator's limits for every sandbox the tools make
- ``_sessions``  one sandbox per client session: made on first use, ended by reset, by the
                 client going away, by the idle TTL or by shutdown
- ``_tools``     the tools: descriptions (with the limits), arguments, engine calls
- ``_reply``     a result as the tool's text: the verdict, stdout, stderr, value, error
- ``_guard``     refusing arguments a tool does not take; the handshake era over HTTP
- ``_service``   McpService: the server, its sessions and one-shot runs, for either transport
                 (``McpService(options).server`` is the SDK's MCPServer, for embedding)
- ``_command``   ``nsbox mcp``: its options, stdio until the client goes
"""

from __future__ import annotations

from ._options import McpOptions


def main(argv: list[str]) -> int:
    from ._command import main as run

    return run(argv)


__all__ = ["McpOptions", "main"]
