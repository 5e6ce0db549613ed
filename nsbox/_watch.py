"""A run's clocks: the wall-clock deadline, and CPU time read from the cgroup."""

from __future__ import annotations

from collections.abc import Callable

from ._cgroup import Usage
from ._spec import Limits

#: After a limit is reached, how long init gets to report the kill before the sandbox is killed.
KILL_GRACE = 1.0


class Watch:
    """A run's two clocks: the wall-clock deadline, and CPU time read from the cgroup.

    CPU time is checked when it could first have run out: the time left divided by the
    CPUs the sandbox may use (no sooner than every 10 ms), so a check costs nothing while
    a limit is far and the kill lands within a few milliseconds of it."""

    def __init__(
        self, started: float, timeout: float | None, limits: Limits, usage: Callable[[], Usage], before: Usage
    ) -> None:
        self.started = started
        self.deadline = None if timeout is None else started + timeout
        self.timeout = timeout
        self.cpu_time = limits.cpu_time if limits.cgroups else None  # rlimit-only: the kernel's RLIMIT_CPU
        self.cpus = limits.cpus
        self.usage = usage
        self.before = before
        self.next_cpu_check = started if self.cpu_time is not None else None
        self.kill_by: float | None = None
        self.killed_for: tuple[str, float] | None = None

    def exceeded(self, now: float) -> bool:
        """True once a limit is reached (the caller sends KillRun); then wait for the kill."""
        if self.deadline is not None and self.timeout is not None and now >= self.deadline:
            self.killed_for = ("timeout", self.timeout)
        elif self.cpu_time is not None and self.next_cpu_check is not None and now >= self.next_cpu_check:
            used = (self.usage().cpu_ns - self.before.cpu_ns) / 1e9
            if used >= self.cpu_time:
                self.killed_for = ("cpu_time", self.cpu_time)
            else:
                self.next_cpu_check = now + max(0.01, (self.cpu_time - used) / max(self.cpus, 0.01))
        if self.killed_for is None:
            return False
        self.kill_by = now + KILL_GRACE
        return True

    def wait_ms(self, now: float) -> float | None:
        wakes = [t for t in (self.kill_by,) if t is not None] or [
            t for t in (self.deadline, self.next_cpu_check) if t is not None
        ]
        return None if not wakes else max(0.0, min(wakes) - now) * 1000
