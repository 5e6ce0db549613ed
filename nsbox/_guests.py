"""The guest processes a supervisor keeps, as it sees them: the session's Python kernel
(``_kernel``) and run_code's warm interpreter (``_programs``).

A guest is a python3 inside the sandbox, started by init like a run, that stays: the
supervisor keeps its wire (a socket that is the guest's stdin) and the read ends of its
stdout and stderr pipes for as long as it lives, and starts it again after it died.
Everything it sends is untrusted: frames are parsed with a size cap, and its output is
captured with the run's output limit.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import TYPE_CHECKING

from ._channel import Channel, readable, socketpair
from ._errors import SandboxError
from ._fds import close_fds
from ._protocol import Exec, Exited, KernelReady, M, Signal, WarmReady, parse
from ._stdio import DRAIN_LIMIT, Capture

if TYPE_CHECKING:
    from ._supervisor import Events, Supervisor

#: How long python3 may take to start and say it is ready.
START_TIMEOUT = 30.0


class Guest:
    def __init__(self, argv: tuple[str, ...], process: int, cwd: str, output_limit: int, max_frame: int) -> None:
        self.argv = argv
        self.process = process  #: init's name for it (KERNEL, WARM)
        self.cwd = cwd
        self.output_limit = output_limit
        self.max_frame = max_frame
        self.wire: Channel | None = None
        self.stdout_fd: int | None = None
        self.stderr_fd: int | None = None
        self._child_fds: list[int] = []
        self.running = False
        #: It died since the last one started: the kernel's next execution says state_lost.
        self.lost = False
        self.last_exit: Exited | None = None  #: how the last one ended, as init saw it
        self.requests = 0  #: requests sent to this session's guests of the kind, to number them

    def exec_request(self, env: dict[str, str]) -> tuple[Exec, list[int]]:
        """The Exec that starts it, and the fds that ride along (its stdio)."""
        self.close()
        ours, theirs = socketpair()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.wire = Channel(ours, self.max_frame, accept_fds=False)
        self.stdout_fd, self.stderr_fd = out_r, err_r
        self._child_fds = [theirs.detach(), out_w, err_w]
        self.running = True
        self.last_exit = None
        return Exec(list(self.argv), env, self.cwd, self.process), list(self._child_fds)

    def close_child_fds(self) -> None:
        """Once init has its copies: EOF on our ends must be able to arrive."""
        close_fds(self._child_fds)
        self._child_fds = []

    def captures(self) -> tuple[Capture, Capture]:
        if self.stdout_fd is None or self.stderr_fd is None:
            raise RuntimeError("the guest is not running")
        return Capture(self.stdout_fd, self.output_limit), Capture(self.stderr_fd, self.output_limit)

    def exited(self, message: Exited | None) -> None:
        """The process is gone (reaped by init, or the sandbox was killed)."""
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


def start(sup: Supervisor, guest: Guest, ready: type[KernelReady | WarmReady], events: Events | None) -> None:
    """Start the guest and wait until it says ``ready``. If it cannot start, its Exited
    (guest.running False) makes the caller's loop end at once with the reason."""
    if sup.ctl is None or sup.intermediate_fd is None:
        raise SandboxError("the sandbox is not running")
    exec_request, fds = guest.exec_request(sup.spec.payload_env())
    try:
        sup.send_init(exec_request, fds)
    finally:
        guest.close_child_fds()
    wire = guest.wire
    assert wire is not None  # nosec B101  # set by exec_request
    deadline = time.monotonic() + START_TIMEOUT
    poller = select.poll()
    for fd in (sup.ctl.fileno(), sup.intermediate_fd, wire.fileno()):
        poller.register(fd, select.POLLIN)
    if events is not None:
        poller.register(events.fileno(), select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not guest.running:
            return  # it could not start: the caller reports why
        for fd, _ in poller.poll(left * 1000):
            if fd == sup.ctl.fileno():
                sup.read_init()
            elif fd == sup.intermediate_fd:
                sup.close()
                raise SandboxError("the sandbox died while its Python guest started")
            elif events is not None and fd == events.fileno():
                events.read()  # no request to forward a signal to yet; the session's end is raised
            else:
                try:
                    got = wire.read_packet()
                except EOFError:
                    poller.unregister(fd)
                    continue
                if got is not None:
                    parse(got[0], ready)
                    return
    sup.send_init(Signal(signal.SIGKILL, guest.process))
    raise SandboxError(f"the sandbox's python3 did not start within {START_TIMEOUT:g} s")


def serve_wire(wire: Channel, mask: int, poller: select.poll, *expected: type[M]) -> M | None:
    """Send what the guest takes of a queued request; read its reply (one of ``expected``)."""
    if mask & select.POLLOUT:
        try:
            if wire.flush():
                poller.modify(wire.fileno(), select.POLLIN)
        except (BrokenPipeError, ConnectionResetError):  # it died: its Exited follows
            poller.modify(wire.fileno(), select.POLLIN)
    if not mask & ~select.POLLOUT:
        return None
    try:
        got = wire.read_packet()
    except (EOFError, ConnectionResetError):
        poller.unregister(wire.fileno())  # the guest is ending; init's Exited follows
        return None
    return None if got is None else parse(got[0], *expected)


def drain(*captures: Capture) -> None:
    """What the guest's code wrote before its reply is in the pipes already; take it
    without waiting (a process the kernel's cell left running may go on writing: that goes
    to the next cell)."""
    for capture in captures:
        for _ in range(DRAIN_LIMIT // (1 << 16)):
            if not (readable(capture.fd) and capture.read()):
                break
