"""nsbox's Python kernel: runs INSIDE a sandbox, under the sandbox's own python3.

Standard library only (the sandbox's Python may not be the one nsbox runs under, and
nsbox is not installed inside): the supervisor passes this file's text as ``python3 -c``
(``nsbox._guest.source``).
It is a payload like any other, with the same limits, filter and identity; the
supervisor trusts nothing it says (every frame is parsed with size caps).

Wire (``wire.py``): fd 0 is a socket to the supervisor when we start. We send
``kernel_ready`` once, then for each ``cell`` received ``cell_started`` at once and
``cell_done`` when it ends. The code's output goes to fds
1 and 2 (pipes the supervisor captures), so subprocesses' output is captured too.

A cell runs in one persistent namespace (registered as ``__main__``, so pickling and
``if __name__ == "__main__"`` behave); if its last statement is an expression, its repr
is the cell's value, as in a notebook. SIGINT raises KeyboardInterrupt in the cell
(the supervisor's first answer to a timeout); it is blocked outside cells, so it cannot
break a frame half-written, and one left over from the last cell is discarded.
"""

from __future__ import annotations

import ast
import json
import linecache
import os
import signal
import sys
import traceback
import types
from typing import Any

from nsbox._guest.wire import take_stdin

MAX_REPR = 100_000
MAX_VALUE_DEPTH = 60  # as nsbox._protocol.VALUE_DEPTH: a frame nests at most 64 deep
PACKAGES = "/workspace/.packages"  # where install_packages puts them (pip --target)
_SIGINT = {signal.SIGINT}


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + f"... ({len(text)} characters)"


def describe(exc: BaseException, own_file: str) -> dict[str, str]:
    """type, message and the traceback text without the kernel's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == own_file:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        lines = traceback.format_exception_only(type(exc), exc)
    else:
        lines = traceback.format_exception(type(exc), exc, tb)
    return {"type": type(exc).__name__, "message": str(exc)[:MAX_REPR], "traceback": "".join(lines)[-MAX_REPR:]}


def run_cell(cell: dict[str, Any], namespace: dict[str, Any], number: int) -> dict[str, Any]:
    """Execute one cell; returns the cell_done frame."""
    name = f"<cell {number}>"
    code = cell.get("code", "")
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks show the lines
    value: str | None = None
    error: dict[str, str] | None = None
    result: Any = None
    has_result = False
    own_file = run_cell.__code__.co_filename
    try:
        inputs = cell.get("inputs") or {}
        namespace.update(inputs)
        tree = ast.parse(code, name, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)
        try:
            exec(compile(tree, name, "exec"), namespace)  # nosec B102  # inside the sandbox: running its code is the point
            if last is not None:
                shown = eval(compile(last, name, "eval"), namespace)  # nosec B307  # the cell's last expression
                if shown is not None:
                    namespace["_"] = shown
                    value = short_repr(shown)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
        if cell.get("want_result"):
            if "result" not in namespace:
                raise NameError("the code did not assign the variable 'result'")
            check_result(namespace["result"], cell.get("result_limit", 1 << 20))
            result, has_result = namespace["result"], True
    except BaseException as exc:  # the cell's failure, whatever it is, is its result
        error = describe(exc, own_file)
    reply = {"type": "cell_done", "number": cell.get("number"), "value": value, "error": error}
    reply.update(has_result=has_result, result=result)
    return reply


def check_result(value: Any, limit: int) -> None:
    """The variable ``result`` must be plain JSON, at most ``limit`` bytes of it, nested at
    most MAX_VALUE_DEPTH deep (the supervisor would refuse the reply otherwise)."""
    size = len(json.dumps(value, allow_nan=False, separators=(",", ":")))  # raises if it is not JSON
    if size > limit:
        raise ValueError(f"the variable 'result' takes {size} bytes as JSON; at most {limit} are returned")
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_VALUE_DEPTH:
                raise ValueError(f"the variable 'result' nests deeper than {MAX_VALUE_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # nosec B110  # the cell may have closed or replaced them: nothing to flush
            pass


def discard_pending_interrupt() -> None:
    """A SIGINT that arrived after the last cell ended must not interrupt the next one."""
    while signal.SIGINT in signal.sigpending():
        signal.sigwait(_SIGINT)


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    wire = take_stdin()  # the cells' subprocesses do not get it
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.path.insert(1, PACKAGES)
    me = os.getpid()
    wire.send({"type": "kernel_ready", "python": sys.version.split()[0]})
    number = 0
    while True:
        cell = wire.recv()
        if cell is None or cell.get("type") != "cell":
            return
        number += 1  # for tracebacks: <cell N>
        wire.send({"type": "cell_started", "number": cell.get("number")})
        discard_pending_interrupt()
        reply = run_cell(cell, module.__dict__, number)
        if os.getpid() != me:  # a cell forked and its child came back here: not our reply to send
            os._exit(0)
        flush_output()
        wire.send(reply)


if __name__ == "__main__":
    main()
