"""The MCP servers of the tests, driven by the ``mcp`` SDK's own client.

``transport`` is "stdio" (``nsbox mcp``: each client starts its own server process, as a
desktop agent does) or "http" (``nsbox serve --mcp``: one real uvicorn on 127.0.0.1, many
clients). ``mcp_server(transport, memory=, timeout=, wheels=)`` yields an ``Endpoint``
(``drive(transport, body, ...)`` runs ``body(endpoint)`` with one):
``client()`` connects a new client (a new MCP session), ``flag`` names the option that sets
a limit on that server. Same limits either way: the server options differ only in name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests._serve import Served, served
from tests.conftest import NSBOX_CLI

_T = TypeVar("_T")
TRANSPORTS = ("stdio", "http")
#: The option that sets each limit, by transport (what a refusal names).
FLAGS = {
    "stdio": {"memory": "--memory", "timeout": "--timeout"},
    "http": {"memory": "--default-memory", "timeout": "--default-timeout"},
}
TOOLS = {
    "run_code",
    "execute_python",
    "run_command",
    "write_file",
    "read_file",
    "list_files",
    "install_packages",
    "reset_session",
}


class Endpoint:
    def __init__(self, transport: str, args: list[str], server: Served | None) -> None:
        self.transport = transport
        self.args = args
        self.server = server
        self.flag = FLAGS[transport]

    @contextlib.asynccontextmanager
    async def client(
        self, *, token: str | None = None, mode: str = "auto", headers: dict[str, str] | None = None
    ) -> AsyncIterator[Client]:
        """A new client (a new MCP session); over HTTP with ``token`` (the server's first) and
        ``headers`` on each request."""
        if self.server is None:
            # The SDK gives a server a minimal environment; this run's (its cache and data folders) is added.
            params = StdioServerParameters(command=NSBOX_CLI, args=["mcp", *self.args], env=dict(os.environ))
            async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
                yield client
            return
        sent = {"Authorization": f"Bearer {token or self.server.token}", **(headers or {})}
        async with (
            httpx2.AsyncClient(headers=sent, timeout=120) as http,
            Client(streamable_http_client(f"{self.server.url}/mcp", http_client=http), mode=mode) as client,  # type: ignore[arg-type]
        ):
            yield client


@contextlib.contextmanager
def mcp_server(
    transport: str,
    *,
    memory: str = "256M",
    timeout: float = 10,
    wheels: str | None = None,
    tokens: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[Endpoint]:
    if transport == "stdio":
        args = ["--memory", memory, "--timeout", f"{timeout:g}", *extra]
        yield Endpoint(transport, args + (["--wheels", wheels] if wheels else []), None)
        return
    args = ["--mcp", "--pool-size", "0", "--workers", "1", "--default-memory", memory, "--default-timeout"]
    args += [f"{timeout:g}", *extra, *(["--wheels", wheels] if wheels else [])]
    with served(*args, tokens=tokens or {"agents": "agents-token-0123456789"}) as server:
        yield Endpoint(transport, args, server)


def drive(transport: str, body: Callable[[Endpoint], Awaitable[_T]], **server: Any) -> _T:
    """``body(endpoint)`` with a server of ``mcp_server(transport, **server)``."""
    with mcp_server(transport, **server) as endpoint:
        return asyncio.run(body(endpoint))


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, str]:
    """(is_error, the text of the reply)."""
    reply = await client.call_tool(tool, arguments)
    return bool(reply.is_error), "\n".join(getattr(c, "text", "") for c in reply.content)
