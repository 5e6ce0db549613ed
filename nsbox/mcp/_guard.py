"""Two middlewares of the MCP server (the SDK's ``ServerMiddleware``, before validation).

``ArgumentGuard``: a tool call with an argument the tool does not take (``memory``,
``network``, ``timeout`` where there is none...) is answered with a tool error naming the
server's limits, instead of the SDK's default of ignoring it: a model that asks for more
memory or the network learns that it cannot have them, and from whom.

``HandshakeEra``: the tools keep a sandbox per MCP session, and protocol 2026-07-28 has no
sessions over HTTP (each request stands alone). The HTTP server answers ``server/discover``
with the handshake-era versions only: the SDK's clients (``mode="auto"``) then make the
``initialize`` handshake, whose ``Mcp-Session-Id`` names the session. A client pinned to
2026-07-28 gets ``run_code`` only; the session tools tell it why (``_service.http_key``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from . import _reply
from ._options import McpOptions


class ArgumentGuard(ServerMiddleware[Any]):
    def __init__(self, options: McpOptions, parameters: Mapping[str, frozenset[str]]) -> None:
        self.options = options
        self.parameters = parameters

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call" and isinstance(ctx.params, Mapping):
            name, arguments = ctx.params.get("name"), ctx.params.get("arguments")
            known = self.parameters.get(name) if isinstance(name, str) else None
            if known is not None and isinstance(arguments, Mapping):
                unknown = sorted(str(a) for a in arguments if a not in known)
                if unknown:
                    takes = ", ".join(sorted(known)) or "no arguments"
                    flags = ", ".join(f"{limit}: {flag}" for limit, flag in self.options.flags.items())
                    return _reply.text(
                        f"{name} does not take {', '.join(unknown)} (it takes {takes}). This server's limits are set "
                        f"by its operator ({flags}) and no tool argument changes them: {self.options.limits_text()}.",
                        error=True,
                    )
        return await call_next(ctx)


class HandshakeEra(ServerMiddleware[Any]):
    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "server/discover":
            return mcp_types.DiscoverResult(
                supported_versions=list(HANDSHAKE_PROTOCOL_VERSIONS), capabilities=mcp_types.ServerCapabilities()
            )
        return await call_next(ctx)
