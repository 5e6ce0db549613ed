"""PID 1 of a sandbox: serves runs, reaps every zombie, forwards signals.

At most one process of each kind the supervisor names (``RUN``, a command; ``KERNEL``,
the session's Python kernel): an ``Exec`` forks it (``payload_main``), answers
``Started``, and ``Exited`` once it is reaped, with the errno of a failed execve read
from the payload's close-on-exec error pipe. ``Signal`` goes to that process's group,
``KillRun`` kills every process of the sandbox but init (kill(-1) from PID 1 reaches
exactly the processes of its pid namespace). When the supervisor's channel closes,
init exits and the kernel kills whatever is left in the namespace.

As PID 1 of its namespace, init receives from inside only the signals it has handlers
for (pid_namespaces(7)). It ignores every catchable signal but SIGCHLD, whose handler
only wakes its loop; as root the payload cannot signal it anyway (another uid), but
rootless it shares init's uid.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
from collections.abc import Callable

from ._channel import Channel
from ._errors import ProtocolError
from ._fds import close_fds
from ._protocol import KERNEL, RUN, Exec, Exited, KillRun, Signal, Started, parse

PayloadMain = Callable[[Exec, list[int], int], None]


class _Run:
    def __init__(self, process: int, pid: int, errpipe: int) -> None:
        self.process = process
        self.pid = pid
        self.errpipe = errpipe

    def failure(self) -> tuple[int | None, str | None]:
        """The payload's pre-exec failure report, if it wrote one (it is dead: no blocking)."""
        try:
            data = os.read(self.errpipe, 4096)
        finally:
            os.close(self.errpipe)
        if not data:
            return None, None
        try:
            report = json.loads(data)
            return int(report["errno"]), str(report["stage"])
        except (ValueError, KeyError, TypeError):
            return 0, "before execve"


def ignore_signals() -> None:
    """Every catchable signal ignored (the payload resets them all before execve)."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_IGN)


def serve(ctl: Channel, payload_main: PayloadMain) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    poller = select.poll()
    poller.register(ctl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    runs: dict[int, _Run] = {}  # by process kind
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(ctl, runs)
                continue
            try:
                got = ctl.read_packet()
            except EOFError:
                return
            if got is None:
                continue
            obj, fds = got
            message = parse(obj, Exec, Signal, KillRun)
            if isinstance(message, Exec):
                if message.process in runs or message.process not in (RUN, KERNEL) or len(fds) != 3:
                    close_fds(fds)
                    raise ProtocolError("exec of a process that is running, or without three stdio fds")
                runs[message.process] = _start(ctl, message, fds, payload_main)
            elif isinstance(message, Signal) and message.process in runs:
                _forward(runs[message.process].pid, message.signum)
            elif isinstance(message, KillRun):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)


def _forward(pid: int, signum: int) -> None:
    """To the run's process group; before the payload's setsid there is none yet."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    except OSError:  # EINVAL: not a signal; the supervisor validates, init stays up regardless
        pass


def _start(ctl: Channel, request: Exec, stdio: list[int], payload_main: PayloadMain) -> _Run:
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        payload_main(request, stdio, err_w)
        os._exit(127)  # payload_main never returns
    os.close(err_w)
    close_fds(stdio)
    ctl.send(Started(pid, request.process))
    return _Run(request.process, pid, err_r)


def _reap(ctl: Channel, runs: dict[int, _Run]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for run in list(runs.values()):
            if pid == run.pid:
                err, stage = run.failure()
                ctl.send(Exited(status, err, stage, run.process))
                del runs[run.process]
