"""SandboxPool: sandboxes started ahead of need, each handed to one user only.

A background thread keeps ``size`` started sandboxes ready (creating one costs tens of
milliseconds: a supervisor forked from the spawner, namespaces, cgroup, root); ``acquire()``
takes one off the queue, which costs a lock and a check that its supervisor still
answers. The sandbox then belongs to the caller, who closes it: a pool never takes a
sandbox back, so nothing of one user (files, processes, Python state) can reach the next.
``close()`` stops the refill and destroys the sandboxes still waiting.
"""

from __future__ import annotations

import collections
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import SandboxError, SpecError
from ._sandbox import NsSandbox, spec_from_options
from ._spec import SandboxSpec

if TYPE_CHECKING:
    from ._client import SandboxClient

MAX_POOL = 64
#: After a sandbox failed to start, how long the refill waits before it tries again.
RETRY_DELAY = 1.0


class SandboxPool:
    """``SandboxPool(size, spec)`` or ``SandboxPool(size, **options)``; ``acquire()`` returns
    a started NsSandbox (use it as a context manager: leaving it destroys the sandbox)."""

    def __init__(self, size: int = 4, spec: SandboxSpec | None = None, **options: Any) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_POOL:
            raise SpecError("size", f"{size!r}: a pool holds 1 to {MAX_POOL} sandboxes")
        if spec is not None and options:
            raise SpecError(tuple(options), "pass either a SandboxSpec or options, not both")
        self.size = size
        self.spec = spec if spec is not None else spec_from_options(**options)
        self._ready: collections.deque[NsSandbox] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._failure: Exception | None = None
        self._filler = threading.Thread(target=self._fill, name="nsbox-pool", daemon=True)
        self._filler.start()

    @property
    def ready(self) -> int:
        """How many started sandboxes are waiting."""
        with self._cond:
            return len(self._ready)

    def acquire(self, timeout: float | None = 30.0) -> NsSandbox:
        """A started sandbox of the pool's spec, now the caller's alone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._ready:
                    if self._closed:
                        raise SandboxError("the pool is closed")
                    if self._failure is not None:
                        raise SandboxError(f"the pool cannot start sandboxes: {self._failure}") from self._failure
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"no sandbox ready within {timeout:g} s")
                    self._cond.wait(left)
                sandbox = self._ready.popleft()
                self._cond.notify_all()  # the refill starts the next one
            if sandbox._healthy():
                return sandbox
            sandbox.close()  # its supervisor died while it waited: never handed out

    def close(self) -> None:
        """Stop the refill and destroy every sandbox still waiting. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._filler is not threading.current_thread():
            self._filler.join()
        with self._cond:
            waiting, self._ready = list(self._ready), collections.deque()
        for sandbox in waiting:
            sandbox.close()

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                sandbox = NsSandbox(self.spec).start()
            except Exception as exc:  # reported to acquire(); tried again after a pause
                with self._cond:
                    self._failure = exc
                    self._cond.notify_all()
                    self._cond.wait(RETRY_DELAY)
                continue
            with self._cond:
                self._failure = None
                keep = not self._closed
                if keep:
                    self._ready.append(sandbox)
                    self._cond.notify_all()
            if not keep:
                sandbox.close()
                return

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncSandboxPool:
    """The async twin: ``await pool.acquire()`` returns a set-up SandboxClient."""

    def __init__(self, size: int = 4, spec: SandboxSpec | None = None, **options: Any) -> None:
        self.pool = SandboxPool(size, spec, **options)

    async def acquire(self, timeout: float | None = 30.0) -> SandboxClient:
        from ._client import SandboxClient

        client = SandboxClient(pool=self.pool, pool_timeout=timeout)
        return await client.setup()

    async def close(self) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.pool.close)

    async def __aenter__(self) -> AsyncSandboxPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
