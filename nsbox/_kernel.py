"""The session's Python kernel, as the supervisor sees it.

The kernel (``_guest/kernel.py``) is a guest (``_guests``): a payload started by init
like a run that stays. It is started on the first ``execute_code`` and again after it
died; the first call after a death reports ``state_lost``.

A cell's timeout is answered first with SIGINT to the kernel's process group (the cell
gets KeyboardInterrupt and the state is kept); if the cell has not ended INTERRUPT_GRACE
later, every process of the sandbox is killed (the state is lost).

The kernel may stop reading (a cell can stop its own process, or replace its loop): a
cell's frame is queued on the wire and sent as the kernel takes it, from the same poll
loop that keeps the deadlines and hears the front-end, so a kernel that never reads costs
a timeout, never a hung supervisor. Output stays bytes until the front-end shows it.

This module makes the kernel's guest, drives a cell through the supervisor's channels
(``execute``), and decides its verdict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import select
import signal
import time
from typing import TYPE_CHECKING

from . import _guest, _guests
from ._display import DisplayIntake, DisplayItem
from ._errors import ProtocolError, SandboxError
from ._guests import Guest
from ._protocol import KERNEL, Cell, CellDisplay, CellDone, CellStarted, Execute, Exited, KernelReady, KillRun, Signal
from ._result import Executed, ExecutionResult, RunResult, Status
from ._spec import WORKSPACE
from ._stdio import Capture
from ._watch import Watch

if TYPE_CHECKING:
    from ._supervisor import Events, Supervisor

#: The guest kernel's text, read once (the spawner imports this module before forking).
KERNEL_SOURCE = _guest.source("kernel")
KERNEL_ARGV = ("python3", "-c", KERNEL_SOURCE)


def new_kernel(output_limit: int) -> Guest:
    """A session's kernel (not started: the first execution starts it)."""
    room = result_limit(output_limit) + display_limit(output_limit) + DISPLAY_ROOM + REPLY_ROOM
    return Guest(KERNEL_ARGV, KERNEL, WORKSPACE, output_limit, room)


#: After the KeyboardInterrupt of a timeout, how long the cell gets to end before the
#: kernel (and every process of the sandbox) is killed.
INTERRUPT_GRACE = 0.1
#: The JSON of a cell's ``result`` (execute_ai_code) may take the output limit, at least this.
MIN_RESULT_LIMIT = 1 << 20
#: Room for the rest of a reply: the value's repr, the error message and the traceback, each
#: at most 100,000 characters (MAX_REPR in _guest/kernel.py), each escaped in JSON to at most
#: 12 bytes (a character outside the BMP is a surrogate pair, two \\uXXXX).
REPLY_ROOM = 4 << 20


def result_limit(output_limit: int) -> int:
    return max(output_limit, MIN_RESULT_LIMIT)


#: Room for what display items carry outside their budget: each item's errors, at most 3 of
#: 300 characters (12 bytes each as JSON at worst), for 100 items; and the JSON around them.
DISPLAY_ROOM = 2 << 20


def display_limit(output_limit: int) -> int:
    """The bytes (as JSON) a cell's display items may take: half the output limit, 1 MiB at least."""
    return max(output_limit // 2, MIN_RESULT_LIMIT)


def execute(sup: Supervisor, request: Execute, timeout: float | None, events: Events | None) -> Executed:
    """Drive one cell: start the kernel if needed, send it, watch the deadlines (SIGINT
    first, then the kill), capture the output, and decide the verdict. A kernel that
    turns out to have died before it took the cell (a run's kill reached it, and its
    Exited was still on the way) is replaced, and the cell goes to the new one."""
    if not sup.alive or sup.ctl is None or sup.intermediate_fd is None:
        raise SandboxError("the sandbox is not running")
    started = time.monotonic()
    state_lost = sup.kernel.lost
    for _ in range(2):
        if not sup.kernel.running:
            _guests.start(sup, sup.kernel, KernelReady, events)
        outcome = _cell(sup, request, Watch(started, timeout, sup.spec.limits, sup.usage, sup.usage()), events)
        if outcome is not None:
            lost = outcome.result.state_lost or state_lost
            return dataclasses.replace(outcome, result=dataclasses.replace(outcome.result, state_lost=lost))
        state_lost = True
    raise SandboxError("the Python kernel died twice before it could take the cell")


def _cell(sup: Supervisor, request: Execute, watch: Watch, events: Events | None) -> Executed | None:
    """One attempt; None if the kernel died before it acknowledged the cell."""
    assert sup.ctl is not None and sup.intermediate_fd is not None  # nosec B101  # checked by execute
    sent = sup.kernel.running
    sup.kernel.lost = False
    wire, output = sup.kernel.wire, sup.kernel.captures()
    sup.cgroup.reset_peak()
    reply: CellDone | None = None
    acknowledged = interrupted = killing = False
    hard_kill_at: float | None = None
    poller = select.poll()
    for fd in (sup.ctl.fileno(), sup.intermediate_fd, *(c.fd for c in output)):
        poller.register(fd, select.POLLIN)
    if events is not None:
        poller.register(events.fileno(), select.POLLIN)
    streaming = request.stream and events is not None
    forwarded = [0, 0]  #: bytes of each capture sent to the front-end so far (streaming)
    intake = DisplayIntake(display_limit(sup.kernel.output_limit) + DISPLAY_ROOM)
    try:
        if wire is not None and sent:
            sup.kernel.requests += 1
            limit, shown = result_limit(sup.kernel.output_limit), display_limit(sup.kernel.output_limit)
            poller.register(wire.fileno(), select.POLLIN | select.POLLOUT)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it died: its Exited follows
                wire.queue(Cell(sup.kernel.requests, request.code, request.inputs, request.want_result, limit, shown))
        while sup.alive and sup.kernel.running and (reply is None or killing):
            now = time.monotonic()
            if watch.kill_by is None and watch.exceeded(now):
                if watch.killed_for is not None and watch.killed_for[0] == "timeout":
                    sup.send_init(Signal(signal.SIGINT, KERNEL))  # first as KeyboardInterrupt
                    interrupted, hard_kill_at = True, now + INTERRUPT_GRACE
                else:
                    sup.send_init(KillRun())
                    killing = True
            if hard_kill_at is not None and now >= hard_kill_at:
                sup.send_init(KillRun())  # the code did not stop: the kernel goes, with the rest
                killing, hard_kill_at = True, None
            if watch.kill_by is not None and now >= watch.kill_by:
                sup.close()
                break
            wait = watch.wait_ms(now)
            if hard_kill_at is not None:
                wait = min(math.inf if wait is None else wait, (hard_kill_at - now) * 1000)
            for fd, mask in poller.poll(wait):
                if fd == sup.ctl.fileno():
                    sup.read_init()  # the kernel's Exited ends the loop
                elif fd == sup.intermediate_fd:
                    sup.close()
                    if watch.kill_by is None:
                        raise SandboxError("the sandbox died during the execution")
                elif wire is not None and fd == wire.fileno():
                    got = _guests.serve_wire(wire, mask, poller, CellStarted, CellDisplay, CellDone)
                    if not isinstance(got, CellStarted | CellDisplay | CellDone) or got.number != sup.kernel.requests:
                        continue  # none, stale, or forged by a cell
                    if reply is not None:
                        continue  # after the cell's end: the next cell's, or forged
                    if isinstance(got, CellStarted):
                        acknowledged = True
                    elif isinstance(got, CellDisplay):
                        item = intake.take(got.item)
                        if item is not None and streaming and events is not None:
                            _guests.drain(*output)  # what the cell printed before it displayed goes first
                            forward(events, output, forwarded)
                            events.output("display", json.dumps(item.to_dict()).encode())
                    else:
                        reply = got
                elif events is not None and fd == events.fileno():
                    if mask & select.POLLOUT:
                        events.flush()
                    if mask & ~select.POLLOUT:
                        for signum in events.read():
                            sup.send_init(Signal(signum, KERNEL))
                else:
                    for capture in output:
                        if fd == capture.fd and not capture.read():
                            poller.unregister(fd)
            if streaming and events is not None:  # the new output goes now; what the socket does not take, on POLLOUT
                forward(events, output, forwarded)
                poller.modify(events.fileno(), select.POLLIN | (0 if events.flush() else select.POLLOUT))
    except ProtocolError as exc:
        sup.close()
        return Executed(
            ExecutionResult(
                Status.ERROR,
                error=f"the Python kernel broke the protocol ({exc}); the sandbox is closed",
                state_lost=True,
                wall_s=time.monotonic() - watch.started,
            )
        )
    except (BrokenPipeError, ConnectionResetError):
        sup.close()
        raise SandboxError("the sandbox's init stopped answering") from None
    if sent and not (acknowledged or reply or killing) and sup.alive and not sup.kernel.running:
        return None
    _guests.drain(*output)
    if streaming and events is not None:
        forward(events, output, forwarded)  # queued: the Done frame goes after it
    used = sup.usage().since(watch.before)
    result = verdict(
        reply if sup.kernel.running else None,
        tuple(intake.items),
        sup.kernel.last_exit,
        interrupted=interrupted,
        killed_for=watch.killed_for,
        oom_killed=used.oom_kills > 0,
        pids_hit=used.pids_max_hits > 0,
        state_lost_before=False,
        output=output,
        wall_s=time.monotonic() - watch.started,
        cpu_s=used.cpu_ns / 1e9,
        memory_peak_bytes=sup.usage().memory_peak,
        limits=sup.cgroup.kind,
        seccomp=sup.spec.seccomp.kind,
    )
    return Executed(result, bytes(output[0].data), bytes(output[1].data))


def forward(events: Events, output: tuple[Capture | None, Capture | None], forwarded: list[int]) -> None:
    """Queue what each capture took since the last call (within the output limit: the
    capture keeps no more) as Output frames to the front-end (a run's or a cell's)."""
    for i, (name, capture) in enumerate(zip(("stdout", "stderr"), output, strict=True)):
        if capture is not None and len(capture.data) > forwarded[i]:
            events.output(name, bytes(capture.data[forwarded[i] :]))
            forwarded[i] = len(capture.data)


def verdict(
    reply: CellDone | None,
    shown: tuple[DisplayItem, ...],
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
    """How a cell ended (``shown``: its display items), by precedence: the kernel's death (oom > cpu_time > timeout >
    signal > exit) > oom > pids > timeout > exception > output_limit > ok. The output
    itself is not in it (see ``Executed``): only whether some was dropped."""
    out, err = output
    error: str | None
    fields: dict[str, object] = {
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
    fields.update(value=reply.value, has_result=reply.has_result, result=reply.result, results=shown)
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
    if status in (Status.OOM, Status.PIDS) and exception is not None:
        error = f"{error} ({exception})"
    return ExecutionResult(status, error=error, traceback=traceback, **fields)  # type: ignore[arg-type]
