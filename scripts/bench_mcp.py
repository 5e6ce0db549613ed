#!/usr/bin/env python3
"""What the MCP layer costs: a tool call's round trip through the ``mcp`` SDK's own client,
over stdio (``nsbox mcp``) and over Streamable HTTP (``nsbox serve --mcp`` on 127.0.0.1),
against the same work through the engine's API in this process.

Rows (each the median and p90 of ``--calls`` calls, one after another, one client):
``execute_python("x + 1")`` in a session, ``run_code("print(1)")``, and
``NsSandbox.execute_code("x + 1")`` / ``NsSandbox.run_code("print(1)")`` as the baselines.
The first call of each (which makes the session's sandbox) is left out and shown apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

NSBOX = str(Path(sys.executable).with_name("nsbox"))
CELL = "x + 1"
PROGRAM = "print(1)"


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 2),
    }


async def timed(call: Callable[[], Awaitable[Any]], calls: int) -> dict[str, float]:
    first = time.perf_counter()
    await call()
    row = {"first_ms": round((time.perf_counter() - first) * 1000, 2)}
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return {**summary(times), **row}


@asynccontextmanager
async def stdio_client() -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=NSBOX, args=["mcp", "--timeout", "30"], env=dict(os.environ))
    async with Client(params) as client:
        yield client


@asynccontextmanager
async def http_client() -> AsyncIterator[Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    server = subprocess.Popen(
        [NSBOX, "serve", "--mcp", "--port", "0", "--pool-size", "0", "--workers", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    try:
        url = ""
        for line in server.stderr:
            found = re.search(r"listening on (\S+)", line)
            url = found.group(1) if found else url
            if '"event":"started"' in line:
                break
        # It logs a line per request: read them all, or its pipe fills and it stops.
        threading.Thread(target=server.stderr.read, daemon=True).start()
        async with (
            httpx2.AsyncClient(timeout=60) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            yield client
    finally:
        server.terminate()
        server.wait(60)


async def over(client_of: Callable[[], Any], calls: int) -> dict[str, dict[str, float]]:
    async with client_of() as client:

        async def cell() -> None:
            reply = await client.call_tool("execute_python", {"code": CELL})
            assert not reply.is_error, reply

        async def program() -> None:
            reply = await client.call_tool("run_code", {"code": PROGRAM})
            assert not reply.is_error, reply

        await client.call_tool("execute_python", {"code": "x = 41"})
        return {"execute_python": await timed(cell, calls), "run_code": await timed(program, calls)}


async def in_process(calls: int) -> dict[str, dict[str, float]]:
    from nsbox import NsSandbox

    with NsSandbox(timeout=30) as sandbox:
        sandbox.execute_code("x = 41")

        async def cell() -> None:
            sandbox.execute_code(CELL)

        async def program() -> None:
            sandbox.run_code(PROGRAM)

        return {"execute_code": await timed(cell, calls), "run_code": await timed(program, calls)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    started = time.monotonic()
    rows: dict[str, dict[str, float]] = {}
    for name, measure in (
        ("in-process NsSandbox", in_process(args.calls)),
        ("nsbox mcp (stdio)", over(stdio_client, args.calls)),
        ("nsbox serve --mcp (HTTP)", over(http_client, args.calls)),
    ):
        for tool, row in asyncio.run(measure).items():
            rows[f"{name}: {tool}"] = row
            print(f"  measured: {name}: {tool}", file=sys.stderr)
    print(f"\nA tool call's round trip, {args.calls} calls one after another (ms):")
    print(f"  {'':48} {'median':>8} {'p90':>8} {'first':>8}")
    for label, row in rows.items():
        print(f"  {label:48} {row['median_ms']:8.2f} {row['p90_ms']:8.2f} {row['first_ms']:8.2f}")
    print(f"total {time.monotonic() - started:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"calls": args.calls, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
