"""A session's run or cell as server-sent events, its output sent while it runs.

``streamed_cell``: execute's output comes through the engine's callbacks (``on_stdout``,
``on_stderr``, called in the server's thread as the output comes), handed to the event loop
and sent at once; the engine's output limit bounds what is held. ``streamed`` (a run):

The run's stdout and stderr are pipes of the server's: the sandbox writes to them, the
event loop reads them as they become readable and each chunk goes out at once as a
``stdout`` or ``stderr`` event (``{"text": ...}``, UTF-8 decoded incrementally, so a
character split between two reads is whole in one event). What the run writes past its
output limit is read and dropped (the events say ``truncated`` at the end); the events
waiting to be sent hold at most that much. When the run returns, what is left in the pipes
is read for at most ``DRAIN`` seconds (a process the run left in the background may keep
them open), then the pipes are closed and the ``result`` event goes out.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ._errors import error_event

#: How long the pipes are read after the run returned, at most.
DRAIN = 0.2
CHUNK = 64 * 1024


async def streamed(call: Callable[[int, int], Awaitable[dict[str, Any]]], cap: int) -> AsyncIterator[tuple[str, Any]]:
    """``call(stdout_fd, stderr_fd)`` runs the command with those as its stdout and stderr
    and returns its result; the events of its output, then ``result``."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    pipes = {name: os.pipe() for name in ("stdout", "stderr")}
    reads = {name: r for name, (r, _) in pipes.items()}
    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in pipes}
    ended: set[str] = set()
    unclosed = {fd for pair in pipes.values() for fd in pair}  #: each closed once: a number is reused
    task: asyncio.Future[dict[str, Any]] | None = None

    def close(fd: int) -> None:
        if fd in unclosed:
            unclosed.discard(fd)
            os.close(fd)

    sent = dropped = 0

    def readable(name: str) -> None:
        nonlocal sent, dropped
        try:
            data = os.read(reads[name], CHUNK)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(reads[name])
            ended.add(name)
            return
        room = max(0, cap - sent)
        sent += min(room, len(data))
        dropped += len(data) - min(room, len(data))
        if room:
            chunks.put_nowait((name, data[:room]))

    def event(item: tuple[str, bytes]) -> tuple[str, Any]:
        return item[0], {"text": decoders[item[0]].decode(item[1])}

    try:
        for name, fd in reads.items():
            os.set_blocking(fd, False)  # the read ends only: the sandbox writes as to any pipe
            loop.add_reader(fd, readable, name)
        yield "started", {}
        task = asyncio.ensure_future(call(pipes["stdout"][1], pipes["stderr"][1]))
        async for item in _while_running(chunks, task):
            yield event(item)
        for _, w in pipes.values():
            close(w)  # ours: the pipes end when the sandbox's copies are gone too
        while len(ended) < len(reads) or not chunks.empty():  # what is left, for DRAIN at most
            try:
                item = await asyncio.wait_for(chunks.get(), DRAIN)
            except TimeoutError:
                break
            yield event(item)
        for name, decoder in decoders.items():
            if rest := decoder.decode(b"", final=True):
                yield name, {"text": rest}
        yield _outcome(task, output_dropped_bytes=dropped)
    finally:  # also when the client went away mid-stream
        for fd in reads.values():
            loop.remove_reader(fd)
            close(fd)
        writes = [w for _, w in pipes.values() if w in unclosed]
        if task is None or task.done():
            for fd in writes:
                close(fd)
        else:  # the run may still be handing them to the sandbox: closed when it returns

            def close_writes(_: object) -> None:
                for fd in writes:
                    close(fd)

            task.add_done_callback(close_writes)


async def streamed_cell(
    call: Callable[[Callable[[str], None], Callable[[str], None]], Awaitable[dict[str, Any]]],
) -> AsyncIterator[tuple[str, Any]]:
    """``call(on_stdout, on_stderr)`` runs the cell with those callbacks (they may be called
    from another thread) and returns its result; the events of its output, then ``result``."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def sink(name: str) -> Callable[[str], None]:
        def hand_over(text: str) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, (name, text))

        return hand_over

    yield "started", {}
    task = asyncio.ensure_future(call(sink("stdout"), sink("stderr")))
    try:
        async for name, text in _while_running(chunks, task):
            yield name, {"text": text}
        await asyncio.sleep(0)  # the callbacks' last hand-overs, queued before the call returned
        while not chunks.empty():
            name, text = chunks.get_nowait()
            yield name, {"text": text}
        yield _outcome(task)
    finally:  # the client may have gone away: the call goes on to its end, its result unread
        task.add_done_callback(_unread)


def _unread(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a refusal nobody reads is not "never retrieved"


_Item = TypeVar("_Item")


async def _while_running(chunks: asyncio.Queue[_Item], task: asyncio.Future[Any]) -> AsyncIterator[_Item]:
    """The chunks as they come, until the call ends with none waiting."""
    while True:
        taking = asyncio.ensure_future(chunks.get())
        await asyncio.wait({taking, task}, return_when=asyncio.FIRST_COMPLETED)
        if not taking.done():
            taking.cancel()  # the call returned with no chunk waiting
            return
        yield taking.result()


def _outcome(task: asyncio.Future[dict[str, Any]], **extra: Any) -> tuple[str, Any]:
    """The last event: ``result``, or ``error`` for a refusal (the answer has begun: 200)."""
    try:
        return "result", {**task.result(), **extra}
    except Exception as exc:
        return "error", error_event(exc)
