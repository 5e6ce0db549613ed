"""The agents' sessions: one sandbox per MCP client session, made on its first use.

A session is keyed by its owner (a token's name; ``stdio`` for the one client of a stdio
server) and the MCP session's id, so a client that learnt another token's session id still
reaches only a sandbox of its own token. Its calls go one at a time, in a thread each (the
engine's calls block). It ends by ``reset_session``, when the client goes away (the end of
stdio; an HTTP DELETE), after ``idle_ttl`` unused (the next call makes a new one and says
that the old one's state is gone), or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from nsbox import NsSandbox

from ._options import McpOptions

_T = TypeVar("_T")
Key = tuple[str, str]
#: How often the reaper looks for idle sessions, at most.
REAP_EVERY = 1.0


class Refused(Exception):
    """A call the server will not take now (a bound), said to the agent as a tool error."""


class AgentSession:
    def __init__(self, key: Key, sandbox: NsSandbox, memory: int) -> None:
        self.key = key
        self.sandbox = sandbox
        self.memory = memory
        self.last_used = time.monotonic()
        self.active = 0  #: calls running or waiting (an active session is not idle)
        self.turn = asyncio.Lock()


class AgentSessions:
    """``admit(memory)`` / ``release(memory)``: a host's memory budget (``nsbox serve``);
    ``admit`` raises to refuse a new session."""

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
        self._starting: dict[Key, asyncio.Future[AgentSession]] = {}
        self._gone: dict[Key, str] = {}  #: why a key's last session ended, told on its next call
        self.executor = ThreadPoolExecutor(2 * options.max_sessions + 2, thread_name_prefix="nsbox-mcp")
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def call(self, key: Key, function: Callable[[NsSandbox], _T]) -> tuple[_T, str | None]:
        """``function(sandbox)`` in a thread, after the session's calls before it; and a note
        for the agent if this call had to make a new session (why the old one is gone)."""
        session, note = await self._session(key)
        session.active += 1
        try:
            async with session.turn:
                # A call whose client went away still ends in its thread (a sandbox call is not
                # cut half-way); the session stays active until then.
                done = asyncio.get_running_loop().run_in_executor(self.executor, function, session.sandbox)
                return await asyncio.shield(done), note
        finally:
            session.active -= 1
            session.last_used = time.monotonic()

    async def _session(self, key: Key) -> tuple[AgentSession, str | None]:
        session = self._sessions.get(key)
        if session is not None and not session.sandbox.closed:
            return session, None
        if session is not None:  # its sandbox died (e.g. the engine closed it): a new one
            await self.end(key, "its sandbox ended")
        starting = self._starting.get(key)
        if starting is None:  # the first call makes it; calls at the same moment wait for it
            self._check_bounds(key[0])
            starting = asyncio.get_running_loop().create_future()
            self._starting[key] = starting
            try:
                starting.set_result(await self._make(key))
            except asyncio.CancelledError:
                starting.cancel()
                raise
            except BaseException as exc:
                starting.set_exception(exc)
                starting.exception()  # retrieved: the waiters (if any) get it too
                raise
            finally:
                del self._starting[key]
        made = await asyncio.shield(starting)
        return made, self._gone.pop(key, None)

    def _check_bounds(self, owner: str) -> None:
        mine = sum(1 for k in (*self._sessions, *self._starting) if k[0] == owner)
        if mine >= self.options.sessions_per_owner:
            raise Refused(f"{owner} has {mine} live sessions, the most one token may have; end one (reset_session)")
        if len(self._sessions) + len(self._starting) >= self.options.max_sessions:
            raise Refused(f"the server holds {self.options.max_sessions} sessions, its most; try again later")

    async def _make(self, key: Key) -> AgentSession:
        memory = self.options.spec.limits.memory
        if self._admit is not None:
            self._admit(memory)
        sandbox = NsSandbox(self.options.spec)
        starting = asyncio.get_running_loop().run_in_executor(self.executor, sandbox.start)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:  # the client went away: the sandbox is closed once started
            starting.add_done_callback(lambda _: sandbox.close())
            self._give(memory)
            raise
        except BaseException:
            sandbox.close()
            self._give(memory)
            raise
        session = AgentSession(key, sandbox, memory)
        self._sessions[key] = session
        return session

    def _give(self, memory: int) -> None:
        if self._release is not None:
            self._release(memory)

    async def end(self, key: Key, why: str | None = None) -> bool:
        """Destroy the key's session (if it has one); ``why`` is told on the key's next call."""
        session = self._sessions.pop(key, None)
        if session is None:
            return False
        if why is not None:
            self._gone[key] = f"a new session: the previous one ended ({why}); its variables and files are gone"
        try:
            await asyncio.get_running_loop().run_in_executor(None, session.sandbox.close)
        finally:
            self._give(session.memory)
        return True

    async def end_all(self, where: Callable[[Key], bool]) -> None:
        await asyncio.gather(*(self.end(k) for k in list(self._sessions) if where(k)), return_exceptions=True)

    async def _reap(self) -> None:
        ttl = self.options.idle_ttl
        while True:
            await asyncio.sleep(min(REAP_EVERY, ttl / 4))
            now = time.monotonic()
            for key, session in list(self._sessions.items()):
                if not session.active and now - session.last_used >= ttl:
                    with contextlib.suppress(Exception):  # one failed close must not stop the reaper
                        await self.end(key, f"unused for {ttl:g} s")
            if len(self._gone) > 4 * self.options.max_sessions:  # notes nobody came back for
                self._gone.clear()

    async def close(self) -> None:
        """Destroy every session (the server's shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.end_all(lambda _: True)
        self.executor.shutdown(wait=False)
