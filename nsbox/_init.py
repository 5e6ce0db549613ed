"""PID 1 of a sandbox: serves runs, reaps every zombie, forwards signals.

At most one process of each kind the supervisor names (``RUN``, a command; ``KERNEL``, the
session's Python kernel; ``WARM``, run_code's warm interpreter, which init always forks
itself: ``warm_main`` leaves it the capabilities to make programs). Any other ``Exec`` goes
to the launcher (``_launcher``: a process of ours at the payload's privilege, which
posix_spawns the run and reports ``Started`` and ``Exited``), or, for sandboxes whose
rlimits would bind the launcher itself, forks the payload here (``payload_main``): then
``Started`` follows the fork, and ``Exited`` the reap, with the errno of a failed execve
read from the payload's close-on-exec error pipe. Both reach the supervisor the same way.
``Signal`` goes to that process's group once it has one, ``KillRun`` kills every process
of the sandbox but init (kill(-1) from PID 1 reaches exactly the processes of its pid
namespace; the launcher too, which is forked again). When the supervisor's channel closes,
init exits and the kernel kills whatever is left.

The launcher's frames are untrusted (it runs as the payload's uid): one that makes no
sense ends it. Whatever it had started and not reported is reparented to us when it dies,
and reported when we reap it; a run it had not started yet ends as killed, or with the
launcher's own set-up failure.

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
import socket
import time
from collections.abc import Callable

from ._channel import Channel, readable, socketpair
from ._errors import ProtocolError
from ._fds import child_wakeup, close_fds, drain
from ._launcher import NOT_STARTED
from ._protocol import (
    KERNEL,
    MAX_FRAME_FROM_SANDBOX,
    RUN,
    WARM,
    Exec,
    Exited,
    KillRun,
    Signal,
    Started,
    StepFailed,
    parse,
)

PayloadMain = Callable[[Exec, list[int], int], None]
#: How long the launcher gets to take a run's request before it is killed and replaced.
LAUNCHER_SEND_TIMEOUT = 2.0
LauncherMain = Callable[[socket.socket], None]


class _Run:
    def __init__(self, process: int, pid: int | None, errpipe: int | None = None) -> None:
        self.process = process
        self.pid = pid  #: None until the launcher says Started
        self.errpipe = errpipe  #: forked here: the payload's pre-exec error pipe
        self.signals: list[int] = []  #: to deliver once there is a pid

    def failure(self) -> tuple[int | None, str | None]:
        """The payload's pre-exec failure report, if it wrote one (it is dead: no blocking)."""
        if self.errpipe is None:
            return None, None
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


class _Launcher:
    """Init's handle on the launcher process (started on demand, again after it died)."""

    def __init__(self, main: LauncherMain) -> None:
        self._main = main
        self.pid: int | None = None
        self.channel: Channel | None = None
        self.failure: StepFailed | None = None  #: its set-up failure, if it sent one

    def ensure(self, poller: select.poll) -> Channel:
        if self.channel is None:
            ours, theirs = socketpair()
            pid = os.fork()
            if pid == 0:
                ours.close()
                self._main(theirs)
                os._exit(127)  # launcher_main never returns
            theirs.close()
            self.pid, self.failure = pid, None
            self.channel = Channel(ours, MAX_FRAME_FROM_SANDBOX, accept_fds=False)
            poller.register(self.channel.fileno(), select.POLLIN)
        return self.channel

    def kill(self) -> None:
        """It is reaped like any child (``_launcher_ended``)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self, poller: select.poll) -> None:
        """Stop listening (the next run forks a new launcher)."""
        if self.channel is not None:
            poller.unregister(self.channel.fileno())
            self.channel.close()
            self.channel = None


def ignore_signals() -> None:
    """Every catchable signal ignored (the payload resets them all before execve)."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_IGN)


def serve(ctl: Channel, payload_main: PayloadMain, launcher_main: LauncherMain | None, warm_main: PayloadMain) -> None:
    wake_r, _ = child_wakeup()
    poller = select.poll()
    poller.register(ctl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    launcher = None if launcher_main is None else _Launcher(launcher_main)
    runs: dict[int, _Run] = {}  # by process kind
    if launcher is not None:
        launcher.ensure(poller)  # now, while the supervisor reports the sandbox ready
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                drain(wake_r)
                _reap(ctl, runs, launcher, poller)
                continue
            if launcher is not None and launcher.channel is not None and fd == launcher.channel.fileno():
                _from_launcher(ctl, runs, launcher, poller)
                continue
            if fd != ctl.fileno():
                continue  # a launcher's channel we stopped listening to in this round
            try:
                got = ctl.read_packet()
            except EOFError:
                return
            if got is None:
                continue
            obj, fds = got
            message = parse(obj, Exec, Signal, KillRun)
            if isinstance(message, Exec):
                if message.process in runs or message.process not in (RUN, KERNEL, WARM) or len(fds) != 3:
                    close_fds(fds)
                    raise ProtocolError("exec of a process that is running, or without three stdio fds")
                if message.process == WARM:
                    runs[WARM] = _fork(ctl, message, fds, warm_main)
                elif launcher is None:
                    runs[message.process] = _fork(ctl, message, fds, payload_main)
                else:
                    runs[message.process] = _launch(ctl, runs, message, fds, launcher, poller)
            elif isinstance(message, Signal) and message.process in runs:
                run = runs[message.process]
                if run.pid is None:
                    run.signals.append(message.signum)
                else:
                    _forward(run.pid, message.signum)
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


def _fork(ctl: Channel, request: Exec, stdio: list[int], payload_main: PayloadMain) -> _Run:
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


def _launch(
    ctl: Channel, runs: dict[int, _Run], request: Exec, stdio: list[int], launcher: _Launcher, poller: select.poll
) -> _Run:
    """Hand the run to the launcher; one that died meanwhile is replaced once."""
    try:
        for attempt in (1, 2):
            try:
                if launcher.channel is None and launcher.pid is not None:
                    # At most one launcher at a time: one we stopped listening to (and
                    # killed) is waited for, and its runs ended, before the next is forked.
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(launcher.pid, 0)
                    _launcher_ended(ctl, runs, launcher, poller)
                # Bounded: the launcher runs as the payload, which can stop it (SIGSTOP); one
                # that takes no request in time is replaced, like one that died.
                launcher.ensure(poller).send(request, stdio, deadline=time.monotonic() + LAUNCHER_SEND_TIMEOUT)
                break
            except OSError:  # TimeoutError is one
                launcher.kill()
                launcher.close(poller)
                if attempt == 2:
                    raise
    finally:
        close_fds(stdio)
    return _Run(request.process, None)


def _from_launcher(ctl: Channel, runs: dict[int, _Run], launcher: _Launcher, poller: select.poll) -> None:
    if launcher.channel is None or not readable(launcher.channel.fileno()):
        return  # an event of a launcher's channel closed earlier in this poll round
    try:
        got = launcher.channel.read_packet()
        if got is None:
            return
        message = parse(got[0], Started, Exited, StepFailed)
        if isinstance(message, StepFailed):
            launcher.failure = message
            return
        if not isinstance(message, Started | Exited):
            return  # parse returns one of the three
        run = runs.get(message.process)
        if run is None or (isinstance(message, Started) and (run.pid is not None or message.pid <= 1)):
            raise ProtocolError("a report on no run of the launcher's")
        if isinstance(message, Started):
            run.pid = message.pid
            ctl.send(message)
            for signum in run.signals:
                _forward(run.pid, signum)
            run.signals = []
        else:
            del runs[message.process]
            ctl.send(message)
    except (EOFError, ProtocolError, OSError):
        # Gone, or talking nonsense (then nothing more it says counts): what it started and
        # did not report is reaped by us; what it had not started ends when it is reaped.
        launcher.kill()
        launcher.close(poller)


def _reap(ctl: Channel, runs: dict[int, _Run], launcher: _Launcher | None, poller: select.poll) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSTOPPED(status):
            # A stopped launcher (a payload may signal it: same uid) could report nothing
            # more: it is killed, and what it started becomes ours. Other stops are no end.
            if launcher is not None and pid == launcher.pid:
                launcher.kill()  # what it sent before stopping is still read
            continue
        if launcher is not None and pid == launcher.pid:
            _launcher_ended(ctl, runs, launcher, poller)
            continue
        for run in list(runs.values()):
            if pid == run.pid:
                err, stage = run.failure()
                ctl.send(Exited(status, err, stage, run.process))
                del runs[run.process]


def _launcher_ended(ctl: Channel, runs: dict[int, _Run], launcher: _Launcher, poller: select.poll) -> None:
    """What it said before it died counts; runs it had not started end now, with its set-up
    failure or as killed (KillRun kills it too). It is forked again for the next run."""
    while launcher.channel is not None and readable(launcher.channel.fileno()):
        _from_launcher(ctl, runs, launcher, poller)  # until its end of file
    launcher.pid = None
    launcher.close(poller)
    failure = launcher.failure
    for run in list(runs.values()):
        if run.pid is None:
            if failure is not None:
                ctl.send(Exited(NOT_STARTED, failure.errno or 0, failure.stage, run.process))
            else:
                ctl.send(Exited(signal.SIGKILL, None, None, run.process))
            del runs[run.process]
