"""Admission: what the server takes on, and what it refuses at once.

``Slots``: a bounded number of requests run at once, a bounded number wait; the next one is
refused (``Busy``, answered 429 with Retry-After) instead of joining an unbounded backlog.
``MemoryBudget``: the sum of the memory limits of the sandboxes held at once stays within
the configured budget; a sandbox that would pass it is refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

#: What a refusal suggests to wait, in seconds.
RETRY_AFTER = 1


class Busy(Exception):
    """The server is at a bound; try again after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: float = RETRY_AFTER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Slots:
    def __init__(self, running: int, waiting: int) -> None:
        self.capacity = running
        self.queue = waiting
        self.running = 0
        self.waiting = 0
        self._free = asyncio.Semaphore(running)
        self._gathering = asyncio.Lock()  #: one request at a time takes several slots (no two half-way)

    @contextlib.asynccontextmanager
    async def slot(self, what: str, count: int = 1) -> AsyncIterator[None]:
        """``count`` slots (a batch: as many as it has programs, up to all): it waits as one
        request, and runs only when it holds them all."""
        count = max(1, min(count, self.capacity))
        if self.running >= self.capacity and self.waiting >= self.queue:
            raise Busy(f"{what}: {self.running} running and {self.waiting} waiting, the most this server takes")
        self.waiting += 1
        taken = 0
        try:
            async with self._gathering if count > 1 else contextlib.nullcontext():
                for _ in range(count):
                    await self._free.acquire()
                    taken += 1
        except BaseException:
            for _ in range(taken):
                self._free.release()
            raise
        finally:
            self.waiting -= 1
        self.running += count
        try:
            yield
        finally:
            self.running -= count
            for _ in range(count):
                self._free.release()


class MemoryBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, amount: int, what: str) -> Iterator[None]:
        """Holds ``amount`` bytes of the budget for the block."""
        self.take(amount, what)
        try:
            yield
        finally:
            self.give(amount)

    def take(self, amount: int, what: str) -> None:
        with self._lock:
            if self.used + amount > self.total:
                raise Busy(
                    f"{what}: its memory limit ({amount >> 20} MiB) would take the sandboxes held past the "
                    f"server's memory budget ({self.used >> 20} of {self.total >> 20} MiB in use)"
                )
            self.used += amount

    def give(self, amount: int) -> None:
        with self._lock:
            self.used -= amount
