"""run_code: programs forked from the sandbox's warm interpreter, as the supervisor sees them.

The warm interpreter (``_guest/warm.py``) is a guest (``_guests``) that init forks with
just the capabilities to turn a forked child into a program of the program uid. It is
started by the first run_code (that program's ``path`` is "cold") and kept; every later
program is a fork of its fork server ("warm"): a Python program pays a fork, not an
interpreter's start. Each program runs as the program uid, in a fresh directory in /tmp,
with stdout and stderr pipes of its own made here; when it ends, a sweep kills every
process of that uid before the end is reported (``ProgramDone``), then removes every file
and IPC object it owns before the next program.

Limits: the wall-clock timeout and the sandbox's CPU time are kept here; a program's own
``memory`` lowers the sandbox's memory limit to what is in use when it starts plus that
much, for as long as it runs (the program is the OOM killer's first choice in it). When
a limit is reached, the warm interpreter is told to stop the program (the sweep kills
it). Every process of the sandbox is killed (``KillRun``; the session's kernel too) when
the program's end does not come within KILL_GRACE of that, when no process of the
program uid could be killed, or when the warm interpreter breaks the protocol; the next
program starts a new warm interpreter. If init does not report even that in time, the
sandbox is closed.

Programs need a uid of their own, so a sandbox that maps a single id (rootless without
a subordinate range: "own" mode) refuses run_code. A warm interpreter that exits because
what a program left could not be removed (UNCLEAN) is replaced; one that cannot start for
that reason ends the sandbox (SandboxError): no program runs beside such a trace.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import select
import signal
import time
from typing import TYPE_CHECKING

from . import _guest, _guests
from ._channel import Channel, readable
from ._errors import ProtocolError, SandboxError, SpecError
from ._fds import close_fds
from ._guests import Guest
from ._protocol import (
    MAX_FRAME_FROM_SANDBOX,
    WARM,
    KillRun,
    Program,
    ProgramDone,
    ProgramStarted,
    RunCode,
    StopProgram,
    WarmReady,
)
from ._result import RunResult, Status
from ._spec import PROGRAM_UID, SWEEPER_UID, option_name
from ._stdio import Capture
from ._watch import KILL_GRACE, Watch

if TYPE_CHECKING:
    from ._supervisor import Events, Supervisor

#: The languages run_code takes; each needs its interpreter or compiler (gcc, g++) in the
#: sandbox's root.
LANGUAGES = ("python", "bash", "c", "cpp")
#: The warm interpreter's exit code when what a program left cannot be removed (EXIT_UNCLEAN).
UNCLEAN = 3
#: ``-I``: no user site, no script directory, no PYTHON* variables in the warm interpreter;
#: ``-S``: it adds the site directories itself (``_guest/warm.py``).
WARM_ARGV = ("python3", "-I", "-S", "-c", _guest.source("warm"), str(PROGRAM_UID), str(SWEEPER_UID))


def new_warm(output_limit: int) -> Guest:
    """A sandbox's warm interpreter (not started: the first run_code starts it)."""
    return Guest(WARM_ARGV, WARM, "/", output_limit, MAX_FRAME_FROM_SANDBOX)


def run_code(sup: Supervisor, request: RunCode, timeout: float | None, events: Events | None) -> RunResult:
    """One program; never raises for the program's own failure. SandboxError if the
    sandbox dies (or cannot run programs), SpecError for a language it does not know."""
    if request.language not in LANGUAGES:
        raise SpecError(option_name("language"), f"{request.language!r} is not one of {', '.join(LANGUAGES)}")
    if sup.plan.mapping.mode == "own":
        raise SandboxError(
            "run_code needs a uid for its programs besides the payload's, and this sandbox maps one id "
            "(rootless without a subordinate range): add one for your user to /etc/subuid and /etc/subgid"
        )
    if not sup.alive or sup.ctl is None or sup.intermediate_fd is None:
        raise SandboxError("the sandbox is not running")
    started = time.monotonic()
    args = (request.language,)
    for _ in range(2):
        path = "warm"
        if not sup.warm.running:
            _guests.start(sup, sup.warm, WarmReady, events)
            path = "cold"
        if not sup.warm.running:
            exited = sup.warm.last_exit
            if exited is not None and os.waitstatus_to_exitcode(exited.wait_status) == UNCLEAN:
                raise SandboxError("what an earlier program left in this sandbox cannot be removed: it runs no more")
            error = "the warm interpreter could not start"
            if exited is not None and exited.exec_errno is not None:
                error += f" ({exited.exec_stage}: errno {exited.exec_errno})"
            return RunResult(args, Status.ERROR, 125, time.monotonic() - started, error=error, path=path)
        before = sup.usage()
        sup.cgroup.reset_peak()
        watch = Watch(started, timeout, sup.spec.limits, sup.usage, before)
        try:
            _limit_memory(sup, request.memory)
            done, taken = _program(sup, request, watch, events)
        finally:
            if request.memory is not None and sup.alive:
                _limit_memory(sup, None)
        if done is not None or taken or watch.killed_for is not None or not sup.alive:
            break
        # It ended between programs (its Exited was on the way): a new one takes this one.
    wall = time.monotonic() - started
    stdout, stderr = done.output if done is not None else (None, None)
    out = None if stdout is None else bytes(stdout.data)
    err = None if stderr is None else bytes(stderr.data)
    if done is None or not done.reply.clean:
        _clear(sup)
    used = sup.usage().since(before)
    reply = None if done is None else done.reply
    wait_status = reply.wait_status if reply is not None else int(signal.SIGKILL)
    if reply is not None and reply.stage == "compile" and os.WIFEXITED(wait_status) and wait_status != 0:
        code = os.WEXITSTATUS(wait_status)
        return RunResult(
            args,
            Status.ERROR,
            code,
            wall,
            error=f"compilation failed (the compiler exited {code})",
            stdout=out,
            stderr=err,
            cpu_s=reply.cpu_s,
            limits=sup.cgroup.kind,
            seccomp=sup.spec.seccomp.kind,
            path=path,
        )
    result = RunResult.decide(
        args,
        wall,
        wait_status,
        killed_for=watch.killed_for,
        pids_hit=used.pids_max_hits > 0,
        stdout=out,
        stderr=err,
        stdout_truncated=stdout is not None and stdout.dropped > 0,
        stderr_truncated=stderr is not None and stderr.dropped > 0,
        cpu_s=reply.cpu_s if reply is not None else used.cpu_ns / 1e9,
        memory_peak_bytes=reply.memory_peak_bytes if reply is not None else None,
        oom_killed=used.oom_kills > 0,
        limits=sup.cgroup.kind,
        seccomp=sup.spec.seccomp.kind,
        path=path,
    )
    if reply is None and watch.killed_for is None and not used.oom_kills:
        return dataclasses.replace(result, error="the warm interpreter ended during the program")
    return result


def _limit_memory(sup: Supervisor, extra: int | None) -> None:
    try:
        sup.cgroup.limit_memory(extra)
    except OSError as exc:
        raise SandboxError(f"the program's memory limit could not be set: {exc.strerror}") from None


class _Done:
    def __init__(self, reply: ProgramDone, output: tuple[Capture, Capture]) -> None:
        self.reply = reply
        self.output = output


def _program(sup: Supervisor, request: RunCode, watch: Watch, events: Events | None) -> tuple[_Done | None, bool]:
    """Send the program and wait for its end: (its end, or None if it did not come (the
    warm interpreter died, or stopped answering); whether the warm interpreter took it)."""
    assert sup.ctl is not None and sup.intermediate_fd is not None  # nosec B101  # checked by run_code
    wire = sup.warm.wire
    assert wire is not None  # nosec B101  # it is running
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(2)]  # this program's own stdout and stderr
    for read_end, _ in pipes:
        os.set_blocking(read_end, False)
    output = (Capture(pipes[0][0], sup.warm.output_limit), Capture(pipes[1][0], sup.warm.output_limit))
    own = sup.warm.captures()  # the warm interpreter's own messages: read so that it never blocks
    sup.warm.requests += 1
    number = sup.warm.requests
    stdin = None if request.stdin is None else base64.b64encode(request.stdin).decode("ascii")
    poller = select.poll()
    for fd in (sup.ctl.fileno(), sup.intermediate_fd, *(c.fd for c in (*output, *own))):
        poller.register(fd, select.POLLIN)
    poller.register(wire.fileno(), select.POLLIN | select.POLLOUT)
    if events is not None:
        poller.register(events.fileno(), select.POLLIN)
    reply: ProgramDone | None = None
    cleared = taken = False
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it died: its Exited follows
            program = Program(number, request.language, request.code, stdin, request.files, request.compile_only)
            wire.queue(program, [write_end for _, write_end in pipes])
        close_fds([write_end for _, write_end in pipes])
        while sup.alive and sup.warm.running and reply is None:
            now = time.monotonic()
            if watch.kill_by is None and watch.exceeded(now):
                _stop(wire, number, poller)
            if watch.kill_by is not None and now >= watch.kill_by:
                if cleared:
                    sup.close()  # init did not report the kill in time: the whole sandbox goes
                    break
                sup.send_init(KillRun())  # the warm interpreter did not stop it: everything goes
                cleared, watch.kill_by = True, now + KILL_GRACE
            for fd, mask in poller.poll(watch.wait_ms(now)):
                if fd == sup.ctl.fileno():
                    sup.read_init()  # the warm interpreter's Exited ends the loop
                elif fd == sup.intermediate_fd:
                    sup.close()
                    if watch.kill_by is None:
                        raise SandboxError("the sandbox died during the program")
                elif fd == wire.fileno():
                    got = _guests.serve_wire(wire, mask, poller, ProgramStarted, ProgramDone)
                    if not isinstance(got, ProgramStarted | ProgramDone) or got.number != number:
                        continue  # none, or stale
                    if isinstance(got, ProgramDone):
                        reply = got
                    taken = True
                elif events is not None and fd == events.fileno():
                    if events.read():  # a signal for the program (Ctrl-C): it ends, as a kill
                        _stop(wire, number, poller)
                else:
                    for capture in (*output, *own):
                        if fd == capture.fd and not capture.read():
                            poller.unregister(fd)
    except ProtocolError:  # the warm interpreter talks nonsense: _clear ends it
        reply = None
    except (BrokenPipeError, ConnectionResetError):
        close_fds([c.fd for c in output])
        sup.close()
        raise SandboxError("the sandbox's init stopped answering") from None
    if reply is None:
        close_fds([c.fd for c in output])
        return None, taken
    _guests.drain(*output)
    close_fds([c.fd for c in output])
    return _Done(reply, output), taken


def _stop(wire: Channel, number: int, poller: select.poll) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        wire.queue(StopProgram(number))
        poller.modify(wire.fileno(), select.POLLIN | select.POLLOUT)


def _clear(sup: Supervisor) -> None:
    """Kill every process of the sandbox but init, and wait until init reports the warm
    interpreter's end (a new one may not be started before): what a program left that
    the sweep could not remove ends with it. The sandbox is closed if that does not come."""
    if not sup.alive:
        return
    sup.send_init(KillRun())
    deadline = time.monotonic() + KILL_GRACE
    while sup.alive and sup.warm.running and sup.ctl is not None:
        left = deadline - time.monotonic()
        if left <= 0 or not readable(sup.ctl.fileno(), timeout=left):
            sup.close()
            return
        sup.read_init()
