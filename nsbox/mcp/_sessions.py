"""The agents' sessions: one sandbox per MCP client session, made on its first use.

A session is keyed by its owner (a token's name; ``stdio`` for the one client of a stdio
server) and the MCP session's id, so a client that learnt another token's session id still
reaches only a sandbox of its own token. Its calls go one at a time, in a thread each (the
engine's calls block). It ends by ``reset_session``, when the client goes away (the end of
stdio; an HTTP DELETE), after ``idle_ttl`` unused or ``lifetime`` old (the next call makes a
new one and says that the old one's state is gone), or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from nsbox import NsSandbox

from ._options import McpOptions

_T = TypeVar("_T")
Key = tuple[str, str]
#: Calls of one session running or waiting at once; beyond it, a tool error.
MAX_CALLS = 4
#: How often the reaper looks for idle sessions, at most.
REAP_EVERY = 1.0


class Refused(Exception):
    """A call the server will not take now (a bound), said to the agent as a tool error."""


class AgentSession:
    def __init__(self, key: Key, sandbox: NsSandbox, memory: int) -> None:
        self.key = key
        self.sandbox = sandbox
        self.memory = memory
        self.created = time.monotonic()
        self.last_used = self.created
        self.active = 0  #: calls running or waiting (an active session is not idle)
        self.turn = asyncio.Lock()  #: held from a call's start until its thread returns


class AgentSessions:
    """``admit(memory)`` / ``release(memory)``: a host's memory budget (``nsbox serve``);
    ``admit`` raises ``Refused`` to refuse a new session."""

    def __init__(
        self,
        options: McpOptions,
        *,
        admit: Callable[[int], None] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        self.options = options
        self._admit = admit
        self._release = release
        self._sessions: dict[Key, AgentSession] = {}
        self._starting: dict[Key, asyncio.Task[None]] = {}
        self._gone: dict[Key, str] = {}  #: why a key's last session ended, told on its next call
        # A session holds one thread at most (its calls go one at a time, each holding the turn
        # until its thread returns), and its start or end one more.
        self.executor = ThreadPoolExecutor(2 * options.max_sessions + 2, thread_name_prefix="nsbox-mcp")
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def call(self, key: Key, function: Callable[[NsSandbox], _T]) -> tuple[_T, str | None]:
        """``function(sandbox)`` in a thread, after the session's calls before it; and a note
        for the agent if this call had to make a new session (why the old one is gone).
        A call whose client went away (cancelled) still ends in its thread, holding the
        session's turn until then: a sandbox call is never cut half-way, nor overlapped."""
        note: str | None = None
        while True:
            session, told = await self._session(key)
            note = told or note
            if session.active >= MAX_CALLS:
                raise Refused(f"the session has {session.active} calls running or waiting, the most it takes")
            session.active += 1
            try:
                await session.turn.acquire()
            except BaseException:
                session.active -= 1
                raise
            if self._sessions.get(key) is session and not session.sandbox.closed:
                break
            session.turn.release()  # it ended while this call waited: the call goes to a new one
            session.active -= 1
        done = asyncio.get_running_loop().run_in_executor(self.executor, function, session.sandbox)

        def over(future: asyncio.Future[_T]) -> None:
            session.turn.release()
            session.active -= 1
            session.last_used = time.monotonic()
            if not future.cancelled():
                future.exception()  # retrieved: a call whose client went away has no one to raise to

        done.add_done_callback(over)
        return await asyncio.shield(done), note

    async def _session(self, key: Key) -> tuple[AgentSession, str | None]:
        """The key's session, made if it has none; the note of why its last one ended."""
        while True:
            session = self._sessions.get(key)
            if session is not None and not session.sandbox.closed:
                return session, self._gone.pop(key, None)
            if session is not None:  # its sandbox died (the engine closed it): a new one
                await self._end(session, "its sandbox ended")
                continue
            starting = self._starting.get(key)
            if starting is None:
                self._check_bounds(key[0])
                # Made by a task of its own: a caller that goes away does not cancel it for the
                # others. The task leaves _starting itself, as it ends (before anyone awaits it).
                starting = asyncio.get_running_loop().create_task(self._make(key))
                self._starting[key] = starting
                starting.add_done_callback(_retrieved)
            await asyncio.shield(starting)

    def _check_bounds(self, owner: str) -> None:
        mine = sum(1 for k in (*self._sessions, *self._starting) if k[0] == owner)
        if mine >= self.options.sessions_per_owner:
            raise Refused(f"{owner} has {mine} live sessions, the most one token may have; end one (reset_session)")
        if len(self._sessions) + len(self._starting) >= self.options.max_sessions:
            raise Refused(f"the server holds {self.options.max_sessions} sessions, its most; try again later")

    async def _make(self, key: Key) -> None:
        try:
            memory = self.options.spec.limits.memory
            if self._admit is not None:
                self._admit(memory)
            sandbox = NsSandbox(self.options.spec)
            try:
                await asyncio.get_running_loop().run_in_executor(self.executor, sandbox.start)
            except BaseException:
                self._discard(sandbox, memory)
                raise
            self._sessions[key] = AgentSession(key, sandbox, memory)
        finally:
            self._starting.pop(key, None)

    def _discard(self, sandbox: NsSandbox, memory: int) -> None:
        """Closes in a thread of its own (never on the event loop), then gives the memory back."""

        def close() -> None:
            try:
                sandbox.close()
            finally:
                self._give(memory)

        threading.Thread(target=close, name="nsbox-mcp-close", daemon=True).start()

    def _give(self, memory: int) -> None:
        if self._release is not None:
            self._release(memory)

    async def end(self, key: Key) -> bool:
        """Destroy the key's session now, if it has one (reset_session, the client's DELETE),
        one being made included."""
        starting = self._starting.get(key)
        if starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)
        session = self._sessions.get(key)
        if session is None:
            return False
        await self._end(session, None)
        return True

    async def _end(self, session: AgentSession, why: str | None) -> None:
        """Destroy this session (not another the key has since); ``why`` is told on the key's next call."""
        if self._sessions.get(session.key) is not session:
            return
        del self._sessions[session.key]
        if why is not None:
            self._gone[session.key] = f"a new session: the previous one ended ({why}); its variables and files are gone"
        closing = asyncio.get_running_loop().run_in_executor(None, session.sandbox.close)
        # Its memory goes back once it is closed, even if this wait is cancelled meanwhile.
        closing.add_done_callback(lambda _: self._give(session.memory))
        await asyncio.shield(closing)

    async def _reap(self) -> None:
        ttl, lifetime = self.options.idle_ttl, self.options.lifetime
        while True:
            await asyncio.sleep(min(REAP_EVERY, ttl / 4, (lifetime or ttl) / 4))
            now = time.monotonic()
            for session in list(self._sessions.values()):
                why = None
                if lifetime is not None and now - session.created >= lifetime:
                    why = f"older than {lifetime:g} s"  # a call running then ends
                elif not session.active and now - session.last_used >= ttl:
                    why = f"unused for {ttl:g} s"
                if why is not None:
                    with contextlib.suppress(Exception):  # one failed close must not stop the reaper
                        await self._end(session, why)
            if len(self._gone) > 4 * self.options.max_sessions:  # notes nobody came back for
                self._gone.clear()

    async def close(self) -> None:
        """Destroy every session (the server's shutdown), those being made too."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        await asyncio.gather(*(self._end(s, None) for s in list(self._sessions.values())), return_exceptions=True)
        self.executor.shutdown(wait=False)


def _retrieved(task: asyncio.Task[None]) -> None:
    """Reads a session's creation's exception: the callers waiting get it themselves, and
    when none waits any more it is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()
