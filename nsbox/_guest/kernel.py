"""nsbox's Python kernel: runs INSIDE a sandbox, under the sandbox's own python3.

Standard library only (the sandbox's Python may not be the one nsbox runs under, and
nsbox is not installed inside): the supervisor passes this file's text as ``python3 -c``
(``nsbox._guest.source``).
It is a payload like any other, with the same limits, filter and identity; the
supervisor trusts nothing it says (every frame is parsed with size caps).

Wire (``wire.py``): fd 0 is a socket to the supervisor when we start. We send
``kernel_ready`` once, then for each ``cell`` received ``cell_started`` at once, a
``cell_display`` for each item the cell shows, as it shows it, and ``cell_done`` when it
ends. The code's output goes to fds 1 and 2 (pipes the supervisor captures), so
subprocesses' output is captured too (flushed before each item, so it comes first).

A cell runs in one persistent namespace (registered as ``__main__``, so pickling and
``if __name__ == "__main__"`` behave); if its last statement is an expression, its repr
is the cell's value, as in a notebook. Display items (``results``): each ``display(obj)``
the cell calls (a builtin here), the last expression's value, then the matplotlib figures
the cell left open (drawn by Agg as PNGs, then closed), each as the MIME types
its IPython ``_repr_*_`` methods give (``text/plain`` always); a method that raises is
noted in the item's ``errors``, a representation past the cell's display budget is left
out and noted in ``omitted`` (its size). The supervisor checks all of it again. The cell's
threads may display too; a process it forked may not (the wire is not its own).

SIGINT raises KeyboardInterrupt in the cell (the supervisor's first answer to a timeout);
it is blocked outside cells, and held back while a frame is written (``Sender``), so it
cannot break a frame half-written; one left over from the last cell is discarded.
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import io
import json
import linecache
import os
import signal
import sys
import threading
import traceback
import types
from typing import Any

from nsbox._guest.wire import Wire, take_stdin

MAX_REPR = 100_000
#: The MIME types a display item may carry (as nsbox._display.MIME_TYPES), with the
#: IPython method that gives each; image/png is base64 text on the wire.
REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("application/json", "_repr_json_"),
)
MAX_ITEMS = 100  #: display items a cell returns at most (as nsbox._display.MAX_ITEMS)
MAX_NOTES, MAX_NOTE = 3, 300  #: an item's errors, and their length (as nsbox._display's)
MAX_VALUE_DEPTH = 60  # as nsbox._protocol.VALUE_DEPTH: a frame nests at most 64 deep
PACKAGES = "/workspace/.packages"  # where install_packages puts them (pip --target)
_SIGINT = {signal.SIGINT}


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + f"... ({len(text)} characters)"


class Sender:
    """The wire, shared by the kernel's loop and a cell's threads: one frame at a time,
    whole. In the main thread SIGINT is held back while a frame is written (a thread that
    took the signal only sets the flag the main thread acts on), then delivered again."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.lock = threading.Lock()
        self.owner = os.getpid()

    def send(self, frame: dict[str, Any]) -> None:
        if os.getpid() != self.owner:
            return  # a process the cell forked: its frames would tear ours
        if threading.current_thread() is not threading.main_thread():
            with self.lock:
                self.wire.send(frame)
            return
        held: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
        try:
            with self.lock:
                self.wire.send(frame)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # to the cell's handler now (or pending, if blocked)


class Display:
    """A cell's ``display``: each item sent as it is made, within the cell's budget (bytes
    of representations) and MAX_ITEMS (one more frame says there were more)."""

    def __init__(self, budget: int, number: Any, sender: Sender) -> None:
        self.budget, self.number, self.sender = budget, number, sender
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, *objects: object) -> None:
        """``display(obj, ...)``: one item per object, in order."""
        for obj in objects:
            self.add(obj)

    def add(self, obj: object) -> None:
        """The object's item; each representation that does not fit what is left of the
        budget (as JSON: escapes counted) is left out, its size noted (text/plain then says so)."""
        with self.lock:
            self.count += 1
            if self.count > MAX_ITEMS:
                if self.count == MAX_ITEMS + 1:
                    self.emit({"data": {}})  # the supervisor says the rest were dropped
                return
        text, errors = short_repr(obj), list[str]()
        shown = [("text/plain", text), *self._representations(obj, errors).items()]
        item: dict[str, Any] = {"data": {}, "errors": [e[:MAX_NOTE] for e in errors[:MAX_NOTES]], "omitted": {}}
        with self.lock:
            for mime, value in shown:
                size = len(json.dumps(value))
                if size > self.budget:
                    item["omitted"][mime] = size
                    if mime == "text/plain":
                        item["data"][mime] = f"<{len(text)} characters: past the display budget>"
                    continue
                self.budget -= size
                item["data"][mime] = value
        flush_output()  # what the cell printed before comes before the item
        self.emit(item)

    def emit(self, item: Any) -> None:
        """Send one item (the supervisor checks it: a cell calling this sends what it likes)."""
        self.sender.send({"type": "cell_display", "number": self.number, "item": item})

    @staticmethod
    def _representations(obj: object, errors: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if isinstance(obj, type):  # a class: its _repr_*_ are unbound functions, as IPython skips them
            return found
        calls = [("_repr_mimebundle_", None)] + [(name, mime) for mime, name in REPR_METHODS]
        for name, mime in calls:
            method = getattr(obj, name, None)
            if method is None or (mime is not None and mime in found):
                continue
            try:
                given = method(include=None, exclude=None) if mime is None else method()
                if mime is None:  # _repr_mimebundle_: a mapping, or (mapping, metadata)
                    bundle = given[0] if isinstance(given, tuple) else given
                    for key, value in (bundle or {}).items():
                        if key != "text/plain" and key in dict(REPR_METHODS):
                            found[key] = _wire_form(key, value)
                elif given is not None:
                    found[mime] = _wire_form(mime, given)
            except Exception as exc:  # the object's own failure: noted, the cell goes on
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        return found


class Figure:
    """A matplotlib figure as a display item: its PNG (or why it has none), its repr as text."""

    def __init__(self, text: str, png: bytes | None = None, failure: Exception | None = None) -> None:
        self.text, self.png, self.failure = text, png, failure

    def _repr_png_(self) -> bytes | None:
        if self.failure is not None:
            raise self.failure  # noted in the item's errors
        return self.png

    def __repr__(self) -> str:
        return self.text


def show_figures(display: Display) -> None:
    """The matplotlib figures the cell left open, each a PNG item (at the figure's size and
    dpi), then closed. Nothing if the cell never imported pyplot; a figure that fails to
    render is an item with its error."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        numbers = list(pyplot.get_fignums())
    except Exception:  # the cell broke pyplot: there is nothing to show
        return
    for number in numbers:
        text = f"<figure {number}>"
        try:
            figure = pyplot.figure(number)
            text = short_repr(figure)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
            display.add(Figure(text, png=buffer.getvalue()))
        except Exception as exc:  # the figure's own failure: its item says it
            display.add(Figure(text, failure=exc))
    with contextlib.suppress(Exception):
        pyplot.close("all")


def _wire_form(mime: str, value: Any) -> Any:
    """A representation as it crosses: text for text types, base64 for a PNG's bytes,
    a JSON value for application/json."""
    if mime == "image/png":
        if isinstance(value, (bytes, bytearray)):
            return base64.b64encode(bytes(value)).decode("ascii")
        if isinstance(value, str):
            return value
        raise TypeError(f"image/png must be bytes, not {type(value).__name__}")
    if mime == "application/json":
        json.dumps(value, allow_nan=False)  # raises if it is not JSON
        return value
    if isinstance(value, tuple):  # (data, metadata), as IPython allows
        value = value[0]
    if not isinstance(value, str):
        raise TypeError(f"{mime} must be str, not {type(value).__name__}")
    return value


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


def run_cell(cell: dict[str, Any], namespace: dict[str, Any], number: int, sender: Sender) -> dict[str, Any]:
    """Execute one cell; returns the cell_done frame."""
    name = f"<cell {number}>"
    code = cell.get("code", "")
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks show the lines
    value: str | None = None
    error: dict[str, str] | None = None
    result: Any = None
    has_result = False
    own_file = run_cell.__code__.co_filename
    display = Display(int(cell.get("display_limit", 1 << 20)), cell.get("number"), sender)
    builtins.display = display  # type: ignore[attr-defined]  # the cell's display()
    try:
        inputs = cell.get("inputs") or {}
        namespace.update(inputs)
        tree = ast.parse(code, name, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)
        try:
            compiled = compile(tree, name, "exec")
            exec(compiled, namespace)  # nosec B102  # inside the sandbox: running its code is the point
            if last is not None:
                shown = eval(compile(last, name, "eval"), namespace)  # nosec B307  # the cell's last expression
                if shown is not None:
                    namespace["_"] = shown
                    value = short_repr(shown)
                    display.add(shown)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
        if cell.get("want_result"):
            if "result" not in namespace:
                raise NameError("the code did not assign the variable 'result'")
            check_result(namespace["result"], cell.get("result_limit", 1 << 20))
            result, has_result = namespace["result"], True
    except BaseException as exc:  # the cell's failure, whatever it is, is its result
        error = describe(exc, own_file)
    show_figures(display)  # as a notebook's inline backend: after the cell, even one that failed
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
    sender = Sender(wire)
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.path.insert(1, PACKAGES)
    os.environ.setdefault("MPLBACKEND", "Agg")  # matplotlib draws to memory: figures are shown as PNGs
    me = os.getpid()
    sender.send({"type": "kernel_ready", "python": sys.version.split()[0]})
    number = 0
    while True:
        cell = wire.recv()
        if cell is None or cell.get("type") != "cell":
            return
        number += 1  # for tracebacks: <cell N>
        sender.send({"type": "cell_started", "number": cell.get("number")})
        discard_pending_interrupt()
        reply = run_cell(cell, module.__dict__, number, sender)
        if os.getpid() != me:  # a cell forked and its child came back here: not our reply to send
            os._exit(0)
        flush_output()
        sender.send(reply)


if __name__ == "__main__":
    main()
