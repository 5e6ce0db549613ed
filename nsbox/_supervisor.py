"""The supervisor: one sandbox, from outside its namespaces.

It computes the plan (the spec was validated already; the root plan can still refuse
targets), sets the sandbox up (``_setup``: the intermediate, the id maps, the cgroup; authority
stays outside), serves runs (deadlines, captured output, signal forwarding), Python cells
(``_kernel`` drives them) and workspace file requests (``_files``), and tears the sandbox
down. It is single-threaded: the CLI process for a one-shot ``nsbox exec``, or a process
forked from the spawner (``_spawner``) for an embedding front-end, in which case
``_session.serve_session`` speaks frames to the front-end.

Teardown is SIGKILL of init through a pidfd (never a pid that could have been reused):
the kernel then kills every process of the pid namespace, and with the last of them
the mount, network and other namespaces go. If the supervisor itself dies, the
intermediate's parent-death signal kills it, init's kills init, and the same follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import time
from typing import Protocol

from . import _caps, _kernel, _mount, _rlimits, _userns
from ._audit import AuditLog
from ._cgroup import CgroupGuard, CgroupLimits, Usage, cgroup_for_host
from ._channel import Channel, readable
from ._child import SandboxPlan
from ._errors import ProtocolError, SandboxError, SecurityError, SpecError
from ._fds import close_fds
from ._files import Workspace
from ._guests import Guest
from ._kernel import new_kernel
from ._protocol import (
    KERNEL,
    MAX_FRAME_TO_INIT,
    RUN,
    WARM,
    Exec,
    Execute,
    Exited,
    FileReply,
    FileRequest,
    KillRun,
    Message,
    Run,
    RunCode,
    Signal,
    Started,
    frame_size,
    parse,
)
from ._result import Executed, RunResult
from ._seccomp import compile_filters
from ._setup import SandboxSetup
from ._spec import SandboxSpec, option_name, parse_timeout
from ._stdio import RunIO
from ._watch import Watch

#: How long the intermediate gets to reap init and exit before it is killed too.
TEARDOWN_TIMEOUT = 5.0
EGRESS_TERM_TIMEOUT = 3.0  #: seconds the router has, at close, for its last audit events
#: How long init gets to take a request (it always reads; stopping PID 1 from inside the
#: namespace is impossible): a supervisor never waits longer on the sandbox's side.
INIT_SEND_TIMEOUT = 5.0


class Events(Protocol):
    """Something besides the run to watch during a run (the front-end, or signals)."""

    def fileno(self) -> int: ...

    def read(self) -> list[int]:
        """Signals to forward to the run; raises SessionClosed to abandon the session."""
        ...

    def output(self, stream: str, data: bytes) -> None:
        """Output of a cell that streams, as it comes (queued: ``flush`` sends it)."""
        ...

    def flush(self) -> bool:
        """Send what is queued, without blocking; True when nothing is left."""
        ...


class SessionClosed(Exception):
    pass


class Supervisor(SandboxSetup):
    def __init__(self, spec: SandboxSpec, guard_cgroup: bool = False) -> None:
        """``guard_cgroup``: fork a guard that removes the cgroups if this process is
        killed (for the one-shot CLI; an embedded supervisor's spawner sweeps instead)."""
        # Rootless, a writable bind makes the payload the caller: what it writes there is theirs.
        mapping = _userns.mapping_for_host(caller_payload=any(m.writable for m in spec.all_mounts))
        if spec.bind_owner is not None and not mapping.privileged:
            raise SpecError(
                option_name("bind_owner"),
                "needs root (a writable bind is then an idmapped mount); as an ordinary user, what the sandbox "
                "writes into a bind lands as you",
            )
        root = _mount.plan_root(spec, (mapping.payload_outer_uid, mapping.payload_outer_gid))
        limits = spec.limits
        self.spec = spec
        self.plan = SandboxPlan(
            spec,
            mapping,
            root,
            _caps.last_cap(),
            os.getpid(),
            _rlimits.plan(limits, mapping.privileged),
            compile_filters(spec.seccomp),  # early: a bad policy fails before anything exists
        )
        pids_max = limits.pids + self.plan.own_processes  # the number the user gives means the payload's
        self.cgroup = cgroup_for_host(CgroupLimits(limits.memory, limits.cpus, pids_max) if limits.cgroups else None)
        self.audit = AuditLog(spec.audit_log)
        self._guard = CgroupGuard(self.cgroup) if guard_cgroup and limits.cgroups else None
        self._intermediate_pid: int | None = None
        self.intermediate_fd: int | None = None
        self._init_fd: int | None = None
        self._sync: Channel | None = None
        self.ctl: Channel | None = None
        self._id_range_hold: socket.socket | None = None
        self.kernel = new_kernel(limits.output_limit)
        self._warm: Guest | None = None  #: run_code's (``warm``), made on first use
        self._egress_pid: int | None = None
        #: a pidfd of the egress proxy (network "allow") or the router (network "routed")
        self._egress_fd: int | None = None
        self._root_hold: int | None = None  #: a shared flock on a stored root (--rootfs NAME)
        self.workspace: Workspace | None = None
        self.alive = False

    # -- runs --------------------------------------------------------------------------
    def run(self, request: Run, fds: list[int], events: Events | None = None) -> RunResult:
        """One run; takes ownership of ``fds``. Raises SandboxError if the sandbox dies,
        SpecError if the request is refused (the sandbox goes on)."""
        try:
            result = self._run(request, fds, events)
        except SpecError as exc:
            self.audit.refused("run", str(exc))
            raise
        self.audit.run(result)
        return result

    def _run(self, request: Run, fds: list[int], events: Events | None) -> RunResult:
        if not self.alive or self.ctl is None or self.intermediate_fd is None:
            close_fds(fds)
            raise SandboxError("the sandbox is not running")
        try:
            timeout = parse_timeout(request.timeout) if request.timeout is not None else self.spec.limits.timeout
            argv = tuple(request.argv)
            exec_request = Exec(list(argv), self.spec.payload_env(request.env), request.cwd, RUN)
            if frame_size(exec_request) > MAX_FRAME_TO_INIT:
                raise SpecError(option_name("command"), f"argv and env exceed {MAX_FRAME_TO_INIT} bytes")
            input_data = request.input or b""
        except BaseException:
            close_fds(fds)
            raise
        io = RunIO(request, fds, self.spec.limits.output_limit, input_data)
        before = self.usage()
        self.cgroup.reset_peak()
        watch = Watch(time.monotonic(), timeout, self.spec.limits, self.usage, before)
        exited: Exited | None = None
        died_at_limit: Usage | None = None  #: the cgroup's counters as an OOM kill ended the sandbox
        try:
            self.send_init(exec_request, io.child_fds)
            io.close_child_fds()
            poller = select.poll()
            poller.register(self.ctl.fileno(), select.POLLIN)
            poller.register(self.intermediate_fd, select.POLLIN)
            io.register(poller)
            if events is not None:
                poller.register(events.fileno(), select.POLLIN)
            streaming = request.stream and events is not None
            forwarded = [0, 0]  #: bytes of each capture sent to the front-end so far (streaming)
            while exited is None and self.alive:
                now = time.monotonic()
                if watch.kill_by is None and watch.exceeded(now):
                    self.send_init(KillRun())
                if watch.kill_by is not None and now >= watch.kill_by:
                    self.close()  # init did not report the kill in time: the whole sandbox goes
                    break
                for fd, mask in poller.poll(watch.wait_ms(now)):
                    if fd == self.ctl.fileno():
                        message = self.read_init()
                        if isinstance(message, Exited) and message.process == RUN:
                            exited = message
                    elif fd == self.intermediate_fd:
                        at_death = self.usage()  # read before close() removes the cgroup
                        self.close()
                        if at_death.oom_kills > before.oom_kills:
                            # The OOM killer took init as well as the payload: memory the payload
                            # held outlived it (a memfd's pages are freed only as its exit ends),
                            # and init was the next choice. The run's verdict is the memory limit.
                            died_at_limit = at_death
                        elif watch.kill_by is None:
                            raise SandboxError("the sandbox died during the run")
                        break
                    elif events is not None and fd == events.fileno():
                        if mask & select.POLLOUT:
                            events.flush()
                        if mask & ~select.POLLOUT:
                            for signum in events.read():
                                self.send_init(Signal(signum, RUN))
                    else:
                        io.handle(fd, poller)
                if streaming and events is not None:  # as a cell's (_kernel.forward)
                    _kernel.forward(events, io.captures(), forwarded)
                    poller.modify(events.fileno(), select.POLLIN | (0 if events.flush() else select.POLLOUT))
            wall = time.monotonic() - watch.started
            io.finish()
            if streaming and events is not None:
                _kernel.forward(events, io.captures(), forwarded)  # queued: the Done frame goes after it
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            raise SandboxError("the sandbox's init stopped answering") from None
        finally:
            io.close()
        return self._verdict(argv, wall, exited, watch, before, io, died_at_limit)

    def _verdict(
        self,
        argv: tuple[str, ...],
        wall: float,
        exited: Exited | None,
        watch: Watch,
        before: Usage,
        io: RunIO,
        died_at_limit: Usage | None = None,
    ) -> RunResult:
        after = died_at_limit or self.usage()
        used = after.since(before)
        stdout, stdout_cut = io.output("stdout")
        stderr, stderr_cut = io.output("stderr")
        cpu_s = used.cpu_ns / 1e9
        killed_for = watch.killed_for
        cpu_time = self.spec.limits.cpu_time
        if killed_for is None and cpu_time is not None and cpu_s >= cpu_time and _killed_by_cpu_rlimit(exited):
            killed_for = ("cpu_time", cpu_time)  # the kernel's RLIMIT_CPU backstop got there first
        if exited is None and killed_for is None and died_at_limit is None:  # the loop ends with one, or raises
            raise SandboxError("the run ended without a verdict")
        wait_status = exited.wait_status if exited is not None else int(signal.SIGKILL)  # (the OOM killer's)
        result = RunResult.decide(
            argv,
            wall,
            wait_status,
            exec_failure=None
            if exited is None or exited.exec_errno is None
            else (exited.exec_errno, exited.exec_stage or "execve"),
            killed_for=killed_for,
            pids_hit=used.pids_max_hits > 0,
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=stdout_cut,
            stderr_truncated=stderr_cut,
            cpu_s=cpu_s,
            memory_peak_bytes=after.memory_peak,
            oom_killed=used.oom_kills > 0,
            limits=self.cgroup.kind,
            seccomp=self.spec.seccomp.kind,
        )
        if died_at_limit is not None:
            said = f"{result.error}; the OOM killer ended the sandbox's init too: the sandbox is closed"
            result = dataclasses.replace(result, error=said)
        return result

    def send_init(self, message: Message, fds: list[int] | None = None) -> None:
        """A request to init, bounded in time: if init does not take it, the sandbox goes."""
        if self.ctl is None:
            raise SandboxError("the sandbox is not running")
        try:
            self.ctl.send(message, fds or (), deadline=time.monotonic() + INIT_SEND_TIMEOUT)
        except (TimeoutError, ProtocolError):
            self.close()
            raise SandboxError("the sandbox's init stopped taking requests") from None

    # -- Python code (the session's kernel) ------------------------------------------------
    def execute(self, request: Execute, events: Events | None = None) -> Executed:
        """One cell of Python in the session's kernel (started if it is not running).
        Never raises for the code's own failure; SandboxError if the sandbox dies."""
        try:
            timeout = self.spec.limits.timeout if request.timeout is None else parse_timeout(request.timeout)
        except SpecError as exc:
            self.audit.refused("execute", str(exc))
            raise
        executed = _kernel.execute(self, request, timeout, events)
        self.audit.execution(executed.result)
        return executed

    # -- programs (run_code) -------------------------------------------------------------------
    @property
    def warm(self) -> Guest:
        """The warm interpreter's guest (imported on first use: ``nsbox exec`` never needs it)."""
        if self._warm is None:
            from ._programs import new_warm

            self._warm = new_warm(self.spec.limits.output_limit)
        return self._warm

    def run_code(self, request: RunCode, events: Events | None = None) -> RunResult:
        """One program in a fresh process forked from the warm interpreter (``_programs``).
        Never raises for the program's own failure; SandboxError if the sandbox dies."""
        from . import _programs

        try:
            timeout = self.spec.limits.timeout if request.timeout is None else parse_timeout(request.timeout)
            result = _programs.run_code(self, request, timeout, events)
        except SpecError as exc:
            self.audit.refused("run_code", str(exc))
            raise
        self.audit.run(result)
        return result

    # -- files of the workspace --------------------------------------------------------------
    def file_op(self, request: FileRequest) -> FileReply:
        """A workspace file operation; SecurityError for a path that leaves the workspace or
        crosses a symlink (also logged), OSError for the rest (no such file...)."""
        if not self.alive or self.workspace is None:
            raise SandboxError("the sandbox is not running")
        try:
            if request.op == "read":
                return FileReply(data=self.workspace.read(request.path))
            if request.op == "write":
                self.workspace.write(request.path, request.data or b"", request.mode)
            elif request.op == "list":
                return FileReply(entries=self.workspace.list(request.path))
            elif request.op == "remove":
                self.workspace.remove(request.path, request.recursive)
            else:
                raise SpecError("op", f"unknown file operation {request.op!r}")
        except (SecurityError, SpecError) as exc:
            self.audit.refused(f"file {request.op}", str(exc))
            raise
        return FileReply()

    def usage(self) -> Usage:
        """The cgroup's counters, or zeros once it is gone (a sandbox killed mid-run)."""
        try:
            return self.cgroup.usage()
        except (OSError, ValueError):
            return Usage()

    def read_init(self) -> Message | None:
        """The next message from init; a guest's end is noted whenever it arrives."""
        if self.ctl is None:
            return None
        try:
            got = self.ctl.read_packet()
        except EOFError:
            return None  # init is gone; the intermediate's pidfd will say so
        message = None if got is None else parse(got[0], Started, Exited)
        if isinstance(message, Exited) and message.process == KERNEL:
            self.kernel.exited(message)
        elif isinstance(message, Exited) and message.process == WARM:
            self.warm.exited(message)
        return message

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Kill the sandbox and wait until every process of it is gone. Idempotent.

        Init is killed, not the intermediate: the intermediate then reaps init and
        exits, and we reap it, so no zombie is left to the host's init to collect."""
        was_alive, self.alive = self.alive, False
        if self._init_fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init_fd, signal.SIGKILL)
        if self.intermediate_fd is not None and (
            self._init_fd is None or not readable(self.intermediate_fd, timeout=TEARDOWN_TIMEOUT)
        ):
            with contextlib.suppress(ProcessLookupError):  # init never started, or it is stuck
                signal.pidfd_send_signal(self.intermediate_fd, signal.SIGKILL)
        if self._intermediate_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._intermediate_pid, 0)
            self._intermediate_pid = None
        for fd in (self._init_fd, self.intermediate_fd):
            if fd is not None:
                os.close(fd)
        self._init_fd = self.intermediate_fd = None
        if self._egress_fd is not None:  # its socket in the sandbox's namespace keeps that alive
            # SIGTERM first: the router writes its per-destination audit events and removes its
            # veth (the proxy just ends); whatever does not end in time is killed.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._egress_fd, signal.SIGTERM)
            if not readable(self._egress_fd, timeout=EGRESS_TERM_TIMEOUT):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._egress_fd, signal.SIGKILL)
            os.close(self._egress_fd)
            self._egress_fd = None
        if self._egress_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._egress_pid, 0)
            self._egress_pid = None
        if was_alive:  # after the router's last network events
            self.audit.closed()
        for guest in (self.kernel, self._warm):
            if guest is None:
                continue
            guest.exited(None)  # with the sandbox (if it had not ended already)
            guest.close()
        if self.workspace is not None:
            self.workspace.close()
            self.workspace = None
        self.cgroup.kill()  # nothing should be left; if anything is, it goes now
        self.cgroup.remove()
        if self._guard is not None:
            self._guard.stop()
        for channel in (self._sync, self.ctl):
            if channel is not None:
                channel.close()
        self._sync = self.ctl = None
        if self._id_range_hold is not None:  # only now that nothing of the sandbox is left
            self._id_range_hold.close()
            self._id_range_hold = None
        if self._root_hold is not None:  # the root may be deleted now, if it was replaced
            os.close(self._root_hold)
            self._root_hold = None
        self.audit.close()


def _killed_by_cpu_rlimit(exited: Exited | None) -> bool:
    return (
        exited is not None
        and os.WIFSIGNALED(exited.wait_status)
        and os.WTERMSIG(exited.wait_status) in (signal.SIGXCPU, signal.SIGKILL)
    )
