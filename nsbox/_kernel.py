"""The session's Python kernel, as the supervisor sees it.

The kernel (``_guest/kernel.py``) is a payload started by init like a run, but it stays:
the supervisor keeps its wire (a socket that is the kernel's stdin) and the read ends of
its stdout and stderr pipes for as long as it lives. It is started on the first
``execute_code`` and again after it died; the first call after a death reports
``state_lost``. Everything it sends is untrusted: frames are parsed with a size cap, and
its output is captured with the run's output limit.

This module holds the kernel's state and the verdict of a cell; the supervisor's
``execute`` drives the loop (it owns init's channel and the deadlines).
"""

from __future__ import annotations

import os
from pathlib import Path

from ._channel import Channel, readable, socketpair
from ._fds import close_fds
from ._protocol import KERNEL, CellDone, Exec, Exited
from ._result import ExecutionResult, RunResult, Status
from ._spec import WORKSPACE
from ._stdio import DRAIN_LIMIT, Capture

#: The guest kernel's text, read once (the spawner imports this module before forking).
KERNEL_SOURCE = (Path(__file__).parent / "_guest" / "kernel.py").read_text()
KERNEL_ARGV = ("python3", "-c", KERNEL_SOURCE)
#: How long python3 may take to start and say it is ready.
KERNEL_START_TIMEOUT = 30.0
#: After the KeyboardInterrupt of a timeout, how long the cell gets to end before the
#: kernel (and every process of the sandbox) is killed.
INTERRUPT_GRACE = 0.1
#: Besides the output limit, room for the value's repr and the traceback in a reply.
_REPLY_ROOM = 1 << 20


class Kernel:
    def __init__(self, output_limit: int) -> None:
        self.output_limit = output_limit
        self.wire: Channel | None = None
        self.stdout_fd: int | None = None
        self.stderr_fd: int | None = None
        self._child_fds: list[int] = []
        self.running = False
        #: A kernel died since the last one started: the next execution says state_lost.
        self.lost = False
        self.last_exit: Exited | None = None  #: how the last kernel ended, as init saw it

    def exec_request(self, env: dict[str, str]) -> tuple[Exec, list[int]]:
        """The Exec that starts a kernel, and the fds that ride along (its stdio)."""
        self.close()
        ours, theirs = socketpair()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.wire = Channel(ours, max(self.output_limit, _REPLY_ROOM) + _REPLY_ROOM, accept_fds=False)
        self.stdout_fd, self.stderr_fd = out_r, err_r
        self._child_fds = [theirs.detach(), out_w, err_w]
        self.running = True
        self.last_exit = None
        return Exec(list(KERNEL_ARGV), env, WORKSPACE, KERNEL), list(self._child_fds)

    def close_child_fds(self) -> None:
        """Once init has its copies: EOF on our ends must be able to arrive."""
        close_fds(self._child_fds)
        self._child_fds = []

    def captures(self) -> tuple[Capture, Capture]:
        if self.stdout_fd is None or self.stderr_fd is None:
            raise RuntimeError("the kernel is not running")
        return Capture(self.stdout_fd, self.output_limit), Capture(self.stderr_fd, self.output_limit)

    def exited(self, message: Exited | None) -> None:
        """The kernel process is gone (reaped by init, or the sandbox was killed)."""
        if self.running:
            self.lost = True
            self.last_exit = message
        self.running = False

    def close(self) -> None:
        self.close_child_fds()
        if self.wire is not None:
            self.wire.close()
            self.wire = None
        close_fds([fd for fd in (self.stdout_fd, self.stderr_fd) if fd is not None])
        self.stdout_fd = self.stderr_fd = None
        self.running = False


def drain(*captures: Capture) -> None:
    """What the cell wrote before its reply is in the pipes already; take it without
    waiting (a process it left running may go on writing: that goes to the next cell)."""
    for capture in captures:
        for _ in range(DRAIN_LIMIT // (1 << 16)):
            if not (readable(capture.fd) and capture.read()):
                break


def verdict(
    reply: CellDone | None,
    exited: Exited | None,
    *,
    interrupted: bool,
    killed_for: tuple[str, float] | None,
    oom_killed: bool,
    pids_hit: bool,
    state_lost_before: bool,
    output: tuple[Capture, Capture],
    **usage: object,
) -> ExecutionResult:
    """How a cell ended, by precedence: the kernel's death (oom > cpu_time > timeout >
    signal > exit) > oom > pids > timeout > exception > output_limit > ok."""
    out, err = output
    error: str | None
    fields: dict[str, object] = {
        "stdout": out.data.decode("utf-8", "replace"),
        "stderr": err.data.decode("utf-8", "replace"),
        "stdout_truncated": out.dropped > 0,
        "stderr_truncated": err.dropped > 0,
        "state_lost": state_lost_before,
        **usage,
    }
    if reply is None:  # the kernel died, or was killed
        fields["state_lost"] = True
        lost = "; the Python state of the session is lost"
        if oom_killed:
            status, error = Status.OOM, "the Python kernel was killed at the memory limit (OOM)"
        elif killed_for is not None and killed_for[0] == "cpu_time":
            status, error = Status.CPU_TIME, f"killed at the {killed_for[1]:g} s CPU-time limit"
        elif killed_for is not None:
            status = Status.TIMEOUT
            error = f"the code did not stop at the {killed_for[1]:g} s deadline (KeyboardInterrupt); it was killed"
        elif exited is not None:
            ended = RunResult.from_wait_status(("python3",), exited.wait_status, 0.0)
            if exited.exec_errno is not None:
                failed = RunResult.exec_failed(("python3",), exited.exec_errno, exited.exec_stage or "execve", 0.0)
                status, error = Status.ERROR, f"the Python kernel could not start: {failed.error}"
            elif ended.status is Status.SIGNAL:
                status, error = Status.SIGNAL, f"the Python kernel was {ended.error}"
            else:
                status, error = Status.EXIT, f"the Python kernel exited with status {ended.exit_code}"
        else:
            status, error = Status.ERROR, "the Python kernel stopped answering"
        return ExecutionResult(status, error=error + lost, **fields)  # type: ignore[arg-type]
    fields.update(value=reply.value, has_result=reply.has_result, result=reply.result)
    exception = None
    if reply.error is not None:
        exception = ": ".join(filter(None, (reply.error.get("type"), reply.error.get("message"))))
    traceback = None if reply.error is None else reply.error.get("traceback")
    if oom_killed:
        status, error = Status.OOM, "a process was killed at the memory limit (OOM)"
    elif pids_hit:
        status, error = Status.PIDS, "a fork failed at the process limit"
    elif interrupted and killed_for is not None and reply.error is not None:
        status = Status.TIMEOUT
        error = f"interrupted at the {killed_for[1]:g} s deadline (KeyboardInterrupt); the state is kept"
    elif reply.error is not None:
        status, error = Status.EXCEPTION, exception
    elif out.dropped or err.dropped:
        status, error = Status.OUTPUT_LIMIT, "output beyond the limit was dropped"
    else:
        status, error = Status.OK, None
    if status is not Status.EXCEPTION and exception is not None:
        error = f"{error} ({exception})"
    return ExecutionResult(status, error=error, traceback=traceback, **fields)  # type: ignore[arg-type]
