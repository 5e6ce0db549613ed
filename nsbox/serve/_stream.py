"""A session's run or cell as server-sent events, its output sent while it runs.

The output comes through the engine's callbacks (``on_stdout``, ``on_stderr``, ``on_result``:
called in the server's thread as the supervisor forwards each chunk or display item), is
handed to the event loop and sent at once as a ``stdout`` or ``stderr`` event
(``{"text": ...}``) or a ``display`` event (the item, as ``DisplayItem.to_dict``: the
sandbox's content, checked but not rendered or sanitised); the engine's output and display
limits bound what is held. Then ``result`` (the call's JSON answer), or ``error``: the
answer has begun (200), so a refusal is an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from nsbox import DisplayItem

from ._errors import error_event

#: What the call is given: its on_stdout, on_stderr and on_result.
Sinks = tuple[Callable[[str], None], Callable[[str], None], Callable[[DisplayItem], None]]


async def streamed(call: Callable[[Sinks], Awaitable[dict[str, Any]]]) -> AsyncIterator[tuple[str, Any]]:
    """``call(sinks)`` runs the run or the cell with those callbacks (called from another
    thread) and returns its answer; the events of its output and items, then the last one."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def hand_over(name: str, data: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (name, data))

    sinks: Sinks = (
        lambda text: hand_over("stdout", {"text": text}),
        lambda text: hand_over("stderr", {"text": text}),
        lambda item: hand_over("display", item.to_dict()),
    )
    yield "started", {}
    task = asyncio.ensure_future(call(sinks))
    try:
        async for event in _while_running(events, task):
            yield event
        await asyncio.sleep(0)  # the callbacks' last hand-overs, queued before the call returned
        while not events.empty():
            yield events.get_nowait()
        yield outcome(task)
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


def outcome(task: asyncio.Future[dict[str, Any]], **extra: Any) -> tuple[str, Any]:
    """The last event: ``result``, or ``error`` for a refusal (the answer has begun: 200)."""
    try:
        return "result", {**task.result(), **extra}
    except Exception as exc:
        return "error", error_event(exc)
