"""``nsbox mcp [options]``: the MCP server on stdio, for one client (a desktop agent).

Its sandbox options are ``nsbox exec``'s (memory, timeout, network, root...): they bound
every sandbox it makes, whatever a tool call asks. stdout is the protocol's: everything
else goes to stderr. It serves until the client closes stdin (or sends SIGTERM, SIGINT or
SIGHUP), then destroys every sandbox and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys

from nsbox import NsboxError, SpecError
from nsbox._flags import EXIT_USAGE, Parser, add_sandbox_options, spec_from_args

from ._options import McpOptions


def _parser() -> argparse.ArgumentParser:
    d = McpOptions()
    p = Parser(
        prog="nsbox mcp",
        description="Serve nsbox's tools to one MCP client over stdio (see the README's 'nsbox mcp').",
    )
    add_sandbox_options(p)
    tools = p.add_argument_group("tools")
    tools.add_argument("--workers", type=int, default=d.workers, help=f"run_code's sandboxes ({d.workers})")
    tools.add_argument(
        "--idle-ttl", type=float, default=d.idle_ttl, help=f"seconds a session may go unused ({d.idle_ttl:g})"
    )
    return p


def options_from(argv: list[str]) -> McpOptions:
    args = _parser().parse_args(argv)
    return McpOptions(spec=spec_from_args(args), workers=args.workers, idle_ttl=args.idle_ttl, max_sessions=1)


def main(argv: list[str]) -> int:
    try:
        options = options_from(argv)
        import anyio

        from ._service import McpService
    except SpecError as exc:
        print(f"nsbox mcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"nsbox mcp: {exc.name} is missing: pip install 'nsbox[mcp]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        service = McpService(options)
    except (NsboxError, OSError) as exc:
        print(f"nsbox mcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def serve() -> None:
        async with anyio.create_task_group() as group:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for _ in signals:
                        group.cancel_scope.cancel()
                        return

            group.start_soon(on_signal)
            await service.run_stdio()
            group.cancel_scope.cancel()

    anyio.run(serve)
    return 0
