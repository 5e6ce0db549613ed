"""``nsbox serve [options]``: parse the options, check them, run uvicorn until SIGTERM.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and lets the requests running
finish for ``--grace`` seconds; then the app's shutdown destroys every session and worker
sandbox, and the command exits 0. Nothing of the server is left behind.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys

from nsbox import NsboxError, SpecError
from nsbox._flags import EXIT_USAGE, Parser

from ._options import MiB, ServeOptions


def _parser() -> argparse.ArgumentParser:
    d = ServeOptions()
    p = Parser(prog="nsbox serve", description="Serve sandboxes over HTTP (see the README).")
    p.add_argument("--host", default=d.host, help=f"address to listen on ({d.host}; others need --token-file)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port ({d.port}; 0: any free one, printed)")
    p.add_argument("--token-file", metavar="FILE", help="bearer tokens, one per line with an optional name (mode 600)")
    p.add_argument("--audit-log", metavar="FILE", help="append every request, refusal and sandbox event (JSON lines)")
    p.add_argument("--max-sandboxes", type=int, default=d.max_sandboxes, help="live sessions, all tokens together")
    p.add_argument("--pool-size", type=int, default=d.pool_size, help="sessions' sandboxes started ahead (0: none)")
    p.add_argument("--workers", type=int, default=d.workers, help="sandboxes running /run_code programs at once")
    p.add_argument("--queue", type=int, default=d.queue, help="/run_code requests waiting; beyond it, 429")
    p.add_argument("--memory-budget", default=f"{d.memory_budget // MiB}M", help="sum of sandboxes' memory limits")
    p.add_argument(
        "--default-memory", default=f"{d.default_memory // MiB}M", help="a request's memory if it gives none"
    )
    p.add_argument("--max-memory", default=f"{d.max_memory // MiB}M", help="the most memory a request may have")
    p.add_argument("--default-timeout", type=float, default=d.default_timeout, help="seconds, if a request gives none")
    p.add_argument("--max-timeout", type=float, default=d.max_timeout, help="the longest timeout a request may have")
    p.add_argument("--max-cpus", type=float, default=d.max_cpus)
    p.add_argument("--max-pids", type=int, default=d.max_pids)
    p.add_argument("--max-workspace", default=f"{d.max_workspace // MiB}M")
    p.add_argument("--session-idle-ttl", type=float, default=d.session_idle_ttl, help="seconds")
    p.add_argument("--session-lifetime", type=float, default=d.session_lifetime, help="seconds")
    p.add_argument("--sessions-per-token", type=int, default=d.sessions_per_token)
    p.add_argument("--requests-per-minute", type=int, default=d.requests_per_minute, help="per token")
    p.add_argument("--max-body", default=f"{d.max_body // MiB}M", help="longest request body (413 beyond)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="programs in one /v1/run_code_batch request")
    p.add_argument("--output-limit", default=f"{d.output_limit // MiB}M", help="a one-shot program's output kept")
    p.add_argument("--max-connections", type=int, default=d.max_connections, help="at once; 503 beyond")
    p.add_argument("--wheels", metavar="DIR", help="a folder of wheels for sessions' install_packages")
    p.add_argument("--grace", type=float, default=d.grace, help="seconds running requests get after SIGTERM")
    p.add_argument("--mcp", action="store_true", help="serve the MCP tools at /mcp too (Streamable HTTP; nsbox[mcp])")
    return p


def options_from(argv: list[str]) -> ServeOptions:
    from nsbox._values import parse_size

    args = vars(_parser().parse_args(argv))
    for name in ("memory_budget", "default_memory", "max_memory", "max_workspace", "max_body", "output_limit"):
        args[name] = parse_size(args[name], name)
    return ServeOptions(**args)


def main(argv: list[str]) -> int:
    try:
        options = options_from(argv)
        from ._app import create_app
    except SpecError as exc:
        print(f"nsbox serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"nsbox serve: {exc.name} is missing: pip install 'nsbox[serve]'", file=sys.stderr)
        return EXIT_USAGE
    import uvicorn

    try:
        app = create_app(options)
    except (SpecError, NsboxError, OSError) as exc:
        print(f"nsbox serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:  # --mcp without the mcp extra
        print(f"nsbox serve: {exc.name} is missing: pip install 'nsbox[serve,mcp]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        listener = _listen(options.host, options.port)
    except OSError as exc:
        print(f"nsbox serve: cannot listen on {options.host}:{options.port}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"nsbox serve: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app,
        access_log=False,  # the app logs every request itself (_log), by token name
        timeout_graceful_shutdown=math.ceil(options.grace),
        limit_concurrency=options.max_connections,
        log_level="warning",
    )
    # uvicorn raises the signal that stopped it again once it has drained and shut down,
    # with the handlers it found restored: these, so that a drained server exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for a socket
    # that says it is TCP; with Nagle on, an answer waited ~40 ms for the client's delayed ACK.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    return listener
