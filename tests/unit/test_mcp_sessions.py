"""The MCP sessions' order of calls and their ends, with a fake sandbox (no root, and no lock
of its own, unlike NsSandbox): what the session's turn guarantees by itself. The real
sandboxes are in tests/integration/test_mcp.py."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from nsbox.mcp import McpOptions, _sessions
from nsbox.mcp._sessions import AgentSessions, Refused

KEY = ("tests", "session-1")


class FakeSandbox:
    made: ClassVar[list[FakeSandbox]] = []

    def __init__(self, spec: Any) -> None:
        self.closed = False
        FakeSandbox.made.append(self)

    def start(self) -> FakeSandbox:
        return self

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_sessions, "NsSandbox", FakeSandbox)
    FakeSandbox.made = []
    yield


def test_a_cancelled_call_keeps_its_session_busy_until_its_thread_returns() -> None:
    """The client gave up on a call: it still runs to its end, the session is not idle
    meanwhile (the reaper leaves it), and the next call starts after it, not beside it."""
    spans: list[tuple[float, float]] = []

    def slow(_: Any) -> None:
        started = time.monotonic()
        time.sleep(1.2)  # long past the idle TTL: a margin for a loaded machine
        spans.append((started, time.monotonic()))

    async def body() -> None:
        sessions = AgentSessions(McpOptions(idle_ttl=0.2))
        sessions.start()
        call = asyncio.ensure_future(sessions.call(KEY, slow))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.3)  # past the idle TTL, while the cancelled call still runs
        await sessions.call(KEY, lambda _: spans.append((time.monotonic(), time.monotonic())))
        assert spans[1][0] >= spans[0][1], f"the next call ran beside the cancelled one: {spans}"
        assert len(FakeSandbox.made) == 1, "the session was reaped while its call still ran"
        await sessions.close()
        assert FakeSandbox.made[0].closed

    asyncio.run(body())


def test_calls_sent_at_once_run_one_after_another_and_a_fifth_waiting_is_refused() -> None:
    spans: list[tuple[float, float]] = []

    def step(_: Any) -> None:
        started = time.monotonic()
        time.sleep(0.1)
        spans.append((started, time.monotonic()))

    async def body() -> None:
        sessions = AgentSessions(McpOptions())
        outcomes = await asyncio.gather(*(sessions.call(KEY, step) for _ in range(5)), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, Refused)]
        assert len(refused) == 1 and "4 calls" in str(refused[0]), outcomes
        ordered = sorted(spans)
        assert len(ordered) == 4 and all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), ordered
        await sessions.close()

    asyncio.run(body())


def test_an_ended_session_is_replaced_once_and_its_memory_comes_back() -> None:
    held: list[int] = []

    async def body() -> None:
        sessions = AgentSessions(McpOptions(), admit=held.append, release=lambda m: held.append(-m))
        await asyncio.gather(*(sessions.call(KEY, lambda _: None) for _ in range(3)))
        assert len(FakeSandbox.made) == 1, "calls at the same moment share the one being made"
        assert await sessions.end(KEY)
        results = await asyncio.gather(*(sessions.call(KEY, lambda _: None) for _ in range(3)))
        assert len(FakeSandbox.made) == 2 and FakeSandbox.made[0].closed
        assert [note for _, note in results] == [None, None, None], "reset_session's end is no surprise"
        assert not await sessions.end(("tests", "another"))
        await sessions.close()
        assert all(s.closed for s in FakeSandbox.made)

    asyncio.run(body())
    assert sum(held) == 0 and len(held) == 4, f"each session's memory taken once and given back once: {held}"


def test_bounds_refuse_a_new_session_and_a_failed_start_gives_its_memory_back() -> None:
    held: list[int] = []

    async def body() -> None:
        sessions = AgentSessions(
            McpOptions(max_sessions=3, sessions_per_owner=2), admit=held.append, release=lambda m: held.append(-m)
        )
        await sessions.call(("alice", "1"), lambda _: None)
        await sessions.call(("alice", "2"), lambda _: None)
        with pytest.raises(Refused, match="alice has 2 live sessions"):
            await sessions.call(("alice", "3"), lambda _: None)
        await sessions.call(("bob", "1"), lambda _: None)
        with pytest.raises(Refused, match="holds 3 sessions"):
            await sessions.call(("carol", "1"), lambda _: None)
        await sessions.close()

    asyncio.run(body())
    assert sum(held) == 0, held

    def failing_start(self: FakeSandbox) -> FakeSandbox:
        raise OSError("no room")

    FakeSandbox.start = failing_start  # type: ignore[method-assign]
    try:

        async def failing() -> None:
            sessions = AgentSessions(McpOptions(), admit=held.append, release=lambda m: held.append(-m))
            with pytest.raises(OSError, match="no room"):
                await sessions.call(KEY, lambda _: None)
            await sessions.close()

        asyncio.run(failing())
    finally:
        del FakeSandbox.start
    assert wait_for(lambda: sum(held) == 0), held


def wait_for(predicate: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(predicate())
