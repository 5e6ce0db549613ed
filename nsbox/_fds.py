"""File descriptors a process holds: closing what it was given, and shedding what it inherited."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def close_all_but(*keep: int) -> None:
    """Close every descriptor but ``keep``: a forked helper must hold nothing of its parent's
    (a caller waiting for end of file on a pipe, a socket that holds a resource)."""
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def stdio_to_devnull(keep_stderr: bool = False) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def child_wakeup() -> tuple[int, int]:
    """A pipe that a SIGCHLD makes readable (through Python's wake-up fd), for a poll loop
    that reaps its children: (read end, write end), both non-blocking and close-on-exec."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    return wake_r, wake_w


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 4096)
