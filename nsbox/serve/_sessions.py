"""Sessions: sandboxes that live across requests, each owned by the token that made it.

A session's id is 128 random bits; ``get`` answers only its owner (another token's id is
"not found", the same answer as an id that never existed). Each session counts against its
owner's quota, the server's maximum and the memory budget until it is destroyed: by DELETE,
by the reaper when it was idle longer than the idle TTL or lived longer than its lifetime
(a call still running then is interrupted), or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from nsbox import NsSandbox, SandboxError, SandboxPool

from ._admission import Busy, MemoryBudget
from ._auth import Principal
from ._options import ServeOptions

_T = TypeVar("_T")
#: Calls of one session running or waiting at once; beyond it, 429.
MAX_CALLS = 4
#: How often the reaper looks for expired sessions, at most.
REAP_EVERY = 1.0


class Session:
    def __init__(self, owner: Principal, sandbox: NsSandbox, memory: int, rootfs: str | None = None) -> None:
        self.id = secrets.token_urlsafe(16)
        self.owner = owner
        self.sandbox = sandbox
        self.memory = memory
        self.created = time.monotonic()
        self.created_at = time.time()
        self.last_used = self.created
        self.active = 0  #: calls running or waiting now (an active session is not idle)
        self.turn = asyncio.Lock()  #: its calls go one at a time: one thread at most waits on its sandbox
        self.rootfs = rootfs  #: the name it was asked for (its path is the host's business)

    def describe(self, options: ServeOptions) -> dict[str, Any]:
        now = time.monotonic()
        idle_end = (now if self.active else self.last_used) + options.session_idle_ttl
        expires = min(idle_end, self.created + options.session_lifetime)
        limits = self.sandbox.spec.limits
        return {
            "id": self.id,
            "created_at": round(self.created_at, 3),
            "expires_in_s": round(max(0.0, expires - now), 3),
            "memory": limits.memory,
            "cpus": limits.cpus,
            "pids": limits.pids,
            "timeout": limits.timeout,
            "workspace_size": self.sandbox.spec.workspace_size,
            "rootfs": self.rootfs,
        }


class Sessions:
    def __init__(self, options: ServeOptions, budget: MemoryBudget, executor: ThreadPoolExecutor) -> None:
        self.options = options
        self.budget = budget
        self.executor = executor
        self._sessions: dict[str, Session] = {}
        self._creating = 0  #: sessions being made now (counted against the bounds meanwhile)
        self._creating_by: collections.Counter[Principal] = collections.Counter()
        self.pool: SandboxPool | None = None
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    async def start(self, pool_spec: Any) -> None:
        if self.options.pool_size:
            self.pool = SandboxPool(self.options.pool_size, pool_spec)
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def create(self, owner: Principal, sandbox: NsSandbox, rootfs: str | None = None) -> Session:
        """``sandbox``: not started; a started one of the pool's spec is taken instead if there is one."""
        mine = sum(1 for s in self._sessions.values() if s.owner == owner) + self._creating_by[owner]
        if mine >= self.options.sessions_per_token:
            raise Busy(f"{owner.name} has {mine} live sessions, the most a token may have", retry_after=5)
        if len(self._sessions) + self._creating >= self.options.max_sandboxes:
            raise Busy(f"the server holds {self.options.max_sandboxes} sessions, its most", retry_after=5)
        memory = sandbox.spec.limits.memory
        self.budget.take(memory, "the session")
        self._creating += 1
        self._creating_by[owner] += 1
        try:
            started = None
            if self.pool is not None and sandbox.spec == self.pool.spec:
                with contextlib.suppress(TimeoutError, SandboxError):  # none ready (or the pool failing): a new one
                    started = await self.call(self.pool.acquire, 0.0)
            if started is None:
                starting = asyncio.get_running_loop().run_in_executor(self.executor, sandbox.start)
                try:
                    started = await asyncio.shield(starting)
                except asyncio.CancelledError:  # the client went away: the sandbox is closed once started
                    starting.add_done_callback(lambda _: sandbox.close())
                    raise
        except BaseException:
            self.budget.give(memory)
            raise
        finally:
            self._creating -= 1
            self._creating_by[owner] -= 1
        session = Session(owner, started, memory, rootfs)
        self._sessions[session.id] = session
        return session

    def get(self, owner: Principal, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        return session if session is not None and session.owner == owner else None

    def owned(self, owner: Principal) -> list[Session]:
        return [s for s in self._sessions.values() if s.owner == owner]

    async def destroy(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, session.sandbox.close)
        finally:
            self.budget.give(session.memory)

    async def call_in(self, session: Session, function: Callable[[NsSandbox], _T]) -> _T:
        """``function(sandbox)`` in a thread, after the session's calls before it; the session
        is active (not idle) until it returns, even if the request that made it went away
        meanwhile. Busy if MAX_CALLS calls of the session are running or waiting."""
        if session.active >= MAX_CALLS:
            raise Busy(f"the session has {session.active} calls running or waiting, the most it takes")
        session.active += 1
        try:
            await session.turn.acquire()
        except BaseException:
            session.active -= 1
            raise
        done = asyncio.get_running_loop().run_in_executor(self.executor, function, session.sandbox)

        def over(_: object) -> None:
            session.turn.release()
            session.active -= 1
            session.last_used = time.monotonic()

        done.add_done_callback(over)
        return await asyncio.shield(done)  # a cancelled request leaves the call to end in its thread

    async def call(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def expired(self) -> list[Session]:
        now = time.monotonic()
        return [
            s
            for s in self._sessions.values()
            if now - s.created >= self.options.session_lifetime
            or (not s.active and now - s.last_used >= self.options.session_idle_ttl)
            or s.sandbox.closed
        ]

    async def _reap(self) -> None:
        every = min(REAP_EVERY, self.options.session_idle_ttl / 4, self.options.session_lifetime / 4)
        while True:
            await asyncio.sleep(every)
            for session in self.expired():
                with contextlib.suppress(Exception):  # one failed close must not stop the reaper
                    await self.destroy(session)

    async def close(self) -> None:
        """Destroy every session and the pool (the server's shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(self.destroy(s) for s in list(self._sessions.values())), return_exceptions=True)
        if self.pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.pool.close)
