"""A process that removes a sandbox's cgroups if the supervisor that made them is killed.

The one-shot CLI is its own supervisor. When it is SIGKILLed its sandbox dies with it
(parent-death signals), but nobody is left to remove the sandbox's now-empty cgroup
directories. The guard is forked right after they are created; it holds the read end of
a pipe whose write end only the supervisor has. At end of file (the supervisor closed it,
or died) it kills whatever is left in the cgroups and removes them. On a normal close the
supervisor removes them first, and the guard finds nothing to do.

An embedded supervisor needs no guard: the spawner that forked it sweeps after it.
"""

from __future__ import annotations

import contextlib
import os
import signal

from .. import _linux
from .._fds import close_all_but, stdio_to_devnull
from ._base import Cgroup

#: The signals a terminal or a process-group kill sends: the guard outlives them to clean up.
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP)


class CgroupGuard:
    def __init__(self, cgroup: Cgroup) -> None:
        self._cgroup = cgroup
        self._pid: int | None = None
        self._write_fd: int | None = None

    def start(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the guard process
            try:
                self._watch(read_fd)
            finally:
                os._exit(0)
        os.close(read_fd)
        self._pid, self._write_fd = pid, write_fd

    def stop(self) -> None:
        """The supervisor removed the cgroups itself: release the guard and reap it."""
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        if self._pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = None

    def _watch(self, read_fd: int) -> None:
        for signum in _IGNORED:
            signal.signal(signum, signal.SIG_IGN)
        close_all_but(0, 1, 2, read_fd)
        stdio_to_devnull()
        with contextlib.suppress(OSError):
            _linux.set_cmdline("nsbox-cgroup-guard")
        while os.read(read_fd, 64):
            pass  # nothing is ever written: only the end of file matters
        self._cgroup.kill()
        self._cgroup.remove()
