"""McpService: the MCP server of nsbox, its sessions and its one-shot runs, for either
transport.

- stdio (``nsbox mcp``): one client per process, so one session (key ``("stdio", "")``);
  ``run_code``'s programs go to a Judge of the service's own. ``run_stdio()`` serves until
  the client closes stdin, then destroys every sandbox before it returns.
- Streamable HTTP (``nsbox serve --mcp``): the host gives the owner of each request (its
  token's name, put in the ASGI scope by the host's auth), the one-shot runner and the
  memory budget; the service itself is the ASGI app of the ``/mcp`` route. The SDK ties each
  MCP session to its token; a request of protocol 2026-07-28 has no session (run_code only).
  A session is keyed by owner and ``Mcp-Session-Id``; a DELETE of the MCP session destroys
  its sandbox at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from nsbox import Judge, RunResult, __version__

from . import _tools
from ._guard import ArgumentGuard, HandshakeEra
from ._options import McpOptions
from ._sessions import AgentSessions, Key

STDIO_KEY: Key = ("stdio", "")
INSTRUCTIONS = (
    "nsbox: a Linux sandbox for running code. run_code runs a program once, with nothing kept; the other tools "
    "share this client's session, where Python variables, files and installed packages persist. Limits: {limits}."
)


class McpService:
    def __init__(
        self,
        options: McpOptions,
        *,
        http: bool = False,
        run_program: _tools.RunProgram | None = None,
        admit: Callable[[int], None] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        self.options = options
        self.http = http
        self.sessions = AgentSessions(options, admit=admit, release=release)
        self._judge: Judge | None = None
        parameters: dict[str, frozenset[str]] = {}
        middleware: list[Any] = [ArgumentGuard(options, parameters)]
        if http:
            middleware.insert(0, HandshakeEra())
        self.server: MCPServer[Any] = MCPServer(
            "nsbox",
            version=__version__,
            instructions=INSTRUCTIONS.format(limits=options.limits_text()),
            middleware=middleware,
            log_level="WARNING",  # the SDK's own INFO lines (every tool error, every session) are noise on stderr
        )
        tools = _tools.Tools(options, self.sessions, run_program or self._run_program, http_key if http else _stdio_key)
        parameters.update(_tools.add(self.server, tools))
        if http:
            # The host checks who asks before a request gets here (tokens; without them, loopback
            # clients naming a loopback Host only): the SDK's own Host check would only repeat it.
            # An MCP session holds no sandbox until a session tool is called (the sandboxes are
            # bounded by ``sessions``): the SDK's own bounds are looser, and its idle timeout
            # longer than the sandboxes', so that a client is told its sandbox expired.
            self.server.streamable_http_app(
                streamable_http_path="/",
                session_idle_timeout=2 * options.idle_ttl,
                max_sessions=4 * options.max_sessions,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )

    # -- one-shot programs (stdio: a Judge of its own) ------------------------------------------
    async def _run_program(self, program: dict[str, Any]) -> RunResult:
        if self._judge is None:
            self._judge = Judge(self.options.workers, spec=self.options.spec)
        judge = self._judge
        results = await asyncio.get_running_loop().run_in_executor(None, judge.run_code_many, [program])
        return results[0]

    # -- lifetime ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The sessions' reaper (and over HTTP the SDK's session manager) while it runs; every
        sandbox destroyed when it ends."""
        self.sessions.start()
        try:
            if self.http:
                async with self.server.session_manager.run():
                    yield
            else:
                yield
        finally:
            with anyio.CancelScope(shield=True):  # a signal's cancellation does not skip the cleanup
                await self.sessions.close()
                if self._judge is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self._judge.close)

    async def run_stdio(self) -> None:
        async with self.running():
            await self.server.run_stdio_async()

    # -- HTTP ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of the ``/mcp`` route."""
        owner = owner_of(scope)
        # The SDK ties an MCP session to the user that opened it (another gets 404, as for an
        # id that never existed): the token's name is that user. No token is kept in it.
        who = AccessToken(token="", client_id=owner, scopes=[])  # nosec B106  # an empty field, not a password
        scope["user"] = AuthenticatedUser(who)
        await self.server.session_manager.handle_request(scope, receive, send)
        if scope.get("method") == "DELETE":  # the client ended its MCP session: its sandbox goes now
            session_id = _header(scope, b"mcp-session-id")
            if session_id:
                await self.sessions.end((owner, session_id))


def _stdio_key(ctx: Context) -> Key:
    return STDIO_KEY


def owner_of(scope: Scope) -> str:
    """The request's owner, as the host's auth put it in the scope's state."""
    state = scope.get("state") or {}
    owner = state.get("principal") if isinstance(state, dict) else getattr(state, "principal", None)
    return str(owner) if owner else "anonymous"


def http_key(ctx: Context) -> Key:
    scope = getattr(ctx.request_context.request, "scope", None)
    session_id = _header(scope, b"mcp-session-id") if scope is not None else None
    # A request of protocol 2026-07-28 bypasses the SDK's session table: an Mcp-Session-Id it
    # carries is only a header the client chose, and names no session.
    if scope is None or not session_id or ctx.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise ToolError(
            "this tool keeps a sandbox per MCP session, and this request has none (protocol 2026-07-28 has no "
            "sessions over HTTP): connect with the initialize handshake (the SDK's mode='auto' does) or use run_code"
        )
    return owner_of(scope), session_id


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
