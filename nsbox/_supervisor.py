"""The supervisor: one sandbox, from outside its namespaces.

It computes the plan (the spec was validated already; the root plan can still refuse
targets), forks the intermediate, writes its id maps (authority stays outside), waits
for init, serves runs (deadlines, captured output, signal forwarding), Python cells
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

import base64
import contextlib
import dataclasses
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from typing import Protocol, TypeVar

from . import _caps, _child, _kernel, _mount, _rlimits, _userns
from ._audit import AuditLog
from ._cgroup import CgroupGuard, CgroupLimits, Usage, cgroup_for_host
from ._channel import Channel, readable, socketpair
from ._child import SandboxPlan
from ._errors import ProtocolError, SandboxError, SecurityError, SetupError, SpecError
from ._fds import close_fds
from ._files import Workspace
from ._host import remedy_for
from ._kernel import Kernel
from ._protocol import (
    KERNEL,
    MAX_FRAME_FROM_SANDBOX,
    MAX_FRAME_TO_INIT,
    RUN,
    Attached,
    Exec,
    Execute,
    Exited,
    FileReply,
    FileRequest,
    Go,
    InitReady,
    InitStarted,
    KillRun,
    Message,
    Run,
    Signal,
    Started,
    StepFailed,
    Unshared,
    encode,
    parse,
)
from ._result import ExecutionResult, RunResult
from ._seccomp import compile_filters
from ._spec import SandboxSpec, option_name, parse_timeout
from ._stdio import RunIO
from ._watch import Watch

SETUP_TIMEOUT = 30.0
#: How long the intermediate gets to reap init and exit before it is killed too.
TEARDOWN_TIMEOUT = 5.0
M = TypeVar("M", bound=Message)


class Events(Protocol):
    """Something besides the run to watch during a run (the front-end, or signals)."""

    def fileno(self) -> int: ...

    def read(self) -> list[int]:
        """Signals to forward to the run; raises SessionClosed to abandon the session."""
        ...


class SessionClosed(Exception):
    pass


class Supervisor:
    def __init__(self, spec: SandboxSpec, guard_cgroup: bool = False) -> None:
        """``guard_cgroup``: fork a guard that removes the cgroups if this process is
        killed (for the one-shot CLI; an embedded supervisor's spawner sweeps instead)."""
        mapping = _userns.mapping_for_host()
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
        self.kernel = Kernel(limits.output_limit)
        self._proxy_pid: int | None = None
        self._proxy_fd: int | None = None  #: a pidfd of the egress proxy (network "allow")
        self.workspace: Workspace | None = None
        self.alive = False

    # -- start -------------------------------------------------------------------------
    def start(self) -> None:
        if self.plan.mapping.privileged:
            with _setup_stage("reserve a host id range", "bind"):
                host_base, self._id_range_hold = _userns.allocate_host_range()
            self.plan = dataclasses.replace(self.plan, mapping=_userns.mapping_for_host(host_base))
        with _setup_stage("create the sandbox's cgroup", "mkdir"):
            self.cgroup.create()
        ns_fds: dict[str, int] = {}
        try:
            if self._guard is not None:
                with _setup_stage("start the cgroup guard", "fork"):
                    self._guard.start()
            pid, sync, ctl = self._fork_intermediate()
            close_fds(self._await_setup(sync, Unshared)[1])
            # Opened now, while the intermediate is a dumpable copy of us: once init runs,
            # /proc/<pid>/ns and setns through its pidfd need ptrace access to a
            # non-dumpable process, which only root has. The egress proxy enters the net
            # namespace (rootless through A: setns(2) wants CAP_SYS_ADMIN in the caller's
            # own user namespace too); join_from_parent enters A.
            mapping = self.plan.mapping
            allow = self.spec.network.mode == "allow"
            with _setup_stage("open the sandbox's namespaces", "open"):
                if allow:
                    ns_fds["net"] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                if mapping.mode == "subordinate" or (allow and not mapping.privileged):
                    ns_fds["user"] = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            if mapping.mode == "subordinate":
                with _setup_stage("write the sandbox's id maps", "newuidmap"):
                    _userns.write_maps_with_helpers(pid, mapping)
            else:
                with _setup_stage("write the sandbox's id maps", "write"):
                    proc_dir = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        _userns.write_maps_from_parent(proc_dir, mapping.outer_uid_map, mapping.outer_gid_map)
                    finally:
                        os.close(proc_dir)
            source_fds: list[int] = []
            if self.plan.mapping.privileged:
                with _setup_stage("open the bind sources", "open"):
                    source_fds = _mount.open_sources_from_parent(pid, self.plan.root.sources)
            try:
                sync.send(Go(), source_fds)
            finally:
                close_fds(source_fds)
            started, fds = self._await_setup(sync, InitStarted)
            if len(fds) != 1:
                close_fds(fds)
                raise ProtocolError("init_started must carry exactly one pidfd")
            self._init_fd = fds[0]
            try:
                with _setup_stage("put the sandbox in its cgroup", "write"):
                    # Now, while init builds the root: the first move into a cgroup waits for
                    # an RCU grace period (cgroup_threadgroup_rwsem; ~10 ms here), which this
                    # hides. Neither process forks before Attached (a fork would wait for the
                    # move, and a child forked earlier would stay outside); init makes its
                    # cgroup namespace after it, so that the sandbox's cgroup is its root.
                    self.cgroup.attach(pid)
                    self.cgroup.attach(started.pid)
                ctl.send(Attached())
            except (OSError, SetupError) as exc:  # init may have failed meanwhile: its report is the cause
                reported = self._init_report()
                if reported is None:
                    raise
                raise reported from exc
            ctl.accept_fds = True  # init's /workspace, sent before any payload ran; never again
            _, fds = self._await_setup(ctl, InitReady)
            ctl.accept_fds = False
            if len(fds) != 1:
                close_fds(fds)
                raise ProtocolError("init_ready must carry exactly one directory fd")
            self.workspace = Workspace(fds[0], mapping.file_api_ids)
            if self.spec.network.mode == "allow":
                from . import _proxy  # only for sandboxes with a way out

                with _setup_stage("start the egress proxy", "fork"):
                    self._proxy_pid, self._proxy_fd = _proxy.start(
                        self.spec.network, ns_fds["net"], ns_fds.get("user"), self.audit
                    )
            if mapping.mode == "subordinate":
                with _setup_stage("join the sandbox's user namespace", "setns"):
                    _userns.join_from_parent(ns_fds["user"])
        except BaseException as exc:
            self.audit.failed(exc if isinstance(exc, Exception) else SandboxError(type(exc).__name__))
            self.close()
            raise
        finally:
            close_fds(list(ns_fds.values()))
        self.alive = True
        self.audit.created(self.spec, self.cgroup.kind)

    def _fork_intermediate(self) -> tuple[int, Channel, Channel]:
        """The intermediate's pid, and our ends of its setup (sync) and control channels."""
        sync_parent, sync_child = socketpair()
        ctl_parent, ctl_child = socketpair()
        pid = os.fork()
        if pid == 0:
            sync_parent.close()
            ctl_parent.close()
            _child.intermediate_main(self.plan, sync_child, ctl_child)
        sync_child.close()
        ctl_child.close()
        self._intermediate_pid = pid
        self.intermediate_fd = os.pidfd_open(pid)
        self._sync = Channel(sync_parent, MAX_FRAME_FROM_SANDBOX)
        self.ctl = Channel(ctl_parent, MAX_FRAME_FROM_SANDBOX, accept_fds=False)
        return pid, self._sync, self.ctl

    def _await_setup(self, channel: Channel, expected: type[M]) -> tuple[M, list[int]]:
        """The next setup message; a StepFailed from either child becomes SetupError."""
        if self._sync is None or self.ctl is None or self.intermediate_fd is None:
            raise SandboxError("the sandbox was closed during setup")
        deadline = time.monotonic() + SETUP_TIMEOUT
        poller = select.poll()
        for fd in (self._sync.fileno(), self.ctl.fileno(), self.intermediate_fd):
            poller.register(fd, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                source = self._sync if fd == self._sync.fileno() else self.ctl if fd == self.ctl.fileno() else None
                if source is None:
                    raise self._setup_failure("the sandbox's intermediate process ended during setup")
                try:
                    got = source.read_packet()
                except EOFError:
                    raise self._setup_failure("a sandbox process ended during setup") from None
                if got is None:
                    continue
                obj, fds = got
                if obj.get("type") == StepFailed.TYPE:
                    close_fds(fds)
                    raise self._setup_failure(parse(obj, StepFailed))
                if source is not channel:
                    close_fds(fds)
                    raise ProtocolError(f"unexpected {str(obj.get('type'))[:40]!r} during setup")
                try:
                    return parse(obj, expected), fds
                except ProtocolError:
                    close_fds(fds)
                    raise
        raise SetupError("sandbox setup", detail=f"no progress within {SETUP_TIMEOUT:g} s")

    def _setup_failure(self, failure: StepFailed | str) -> SetupError:
        """Prefer init's own report: it is sent before init exits, so before the
        intermediate can notice and report the same failure less precisely."""
        reported = self._init_report()
        if reported is not None:
            return reported
        if isinstance(failure, str):
            return SetupError("sandbox setup", detail=failure + self._exit_detail())
        return self._step_error(failure)

    def _init_report(self) -> SetupError | None:
        """The StepFailed init sent before it exited, if it did."""
        with contextlib.suppress(EOFError, ProtocolError, OSError):
            while self.ctl is not None and readable(self.ctl.fileno()):
                got = self.ctl.read_packet()
                if got is not None and got[0].get("type") == StepFailed.TYPE:
                    return self._step_error(parse(got[0], StepFailed))
        return None

    @staticmethod
    def _step_error(failure: StepFailed) -> SetupError:
        return SetupError(
            failure.stage,
            failure.call,
            failure.args,
            failure.errno,
            remedy_for(failure.stage, failure.call, failure.errno),
            detail="" if failure.call else failure.detail,
        )

    def _exit_detail(self) -> str:
        if self._intermediate_pid is None:
            return ""
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self._intermediate_pid, os.WNOHANG)
            if pid:
                self._intermediate_pid = None
                return f" (exit status {os.waitstatus_to_exitcode(status)})"
        return ""

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
            if len(encode(exec_request)) > MAX_FRAME_TO_INIT:
                raise SpecError(option_name("command"), f"argv and env exceed {MAX_FRAME_TO_INIT} bytes")
            input_data = base64.b64decode(request.input, validate=True) if request.input else b""
        except BaseException:
            close_fds(fds)
            raise
        io = RunIO(request, fds, self.spec.limits.output_limit, input_data)
        before = self.usage()
        self.cgroup.reset_peak()
        watch = Watch(time.monotonic(), timeout, self.spec.limits, self.usage, before)
        exited: Exited | None = None
        try:
            self.ctl.send(exec_request, io.child_fds)
            io.close_child_fds()
            poller = select.poll()
            poller.register(self.ctl.fileno(), select.POLLIN)
            poller.register(self.intermediate_fd, select.POLLIN)
            io.register(poller)
            if events is not None:
                poller.register(events.fileno(), select.POLLIN)
            while exited is None and self.alive:
                now = time.monotonic()
                if watch.kill_by is None and watch.exceeded(now):
                    self.ctl.send(KillRun())
                if watch.kill_by is not None and now >= watch.kill_by:
                    self.close()  # init did not report the kill in time: the whole sandbox goes
                    break
                for fd, _ in poller.poll(watch.wait_ms(now)):
                    if fd == self.ctl.fileno():
                        message = self.read_init()
                        if isinstance(message, Exited) and message.process == RUN:
                            exited = message
                    elif fd == self.intermediate_fd:
                        self.close()
                        if watch.kill_by is None:
                            raise SandboxError("the sandbox died during the run")
                        break
                    elif events is not None and fd == events.fileno():
                        for signum in events.read():
                            self.ctl.send(Signal(signum, RUN))
                    else:
                        io.handle(fd, poller)
            wall = time.monotonic() - watch.started
            io.finish()
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            raise SandboxError("the sandbox's init stopped answering") from None
        finally:
            io.close()
        return self._verdict(argv, wall, exited, watch, before, io)

    def _verdict(
        self, argv: tuple[str, ...], wall: float, exited: Exited | None, watch: Watch, before: Usage, io: RunIO
    ) -> RunResult:
        after = self.usage()
        used = after.since(before)
        stdout, stdout_cut = io.output("stdout")
        stderr, stderr_cut = io.output("stderr")
        cpu_s = used.cpu_ns / 1e9
        killed_for = watch.killed_for
        cpu_time = self.spec.limits.cpu_time
        if killed_for is None and cpu_time is not None and cpu_s >= cpu_time and _killed_by_cpu_rlimit(exited):
            killed_for = ("cpu_time", cpu_time)  # the kernel's RLIMIT_CPU backstop got there first
        if exited is None and killed_for is None:  # the loop ends with it, with a kill, or raises
            raise SandboxError("the run ended without a verdict")
        return RunResult.decide(
            argv,
            wall,
            None if exited is None else exited.wait_status,
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

    # -- Python code (the session's kernel) ------------------------------------------------
    def execute(self, request: Execute, events: Events | None = None) -> ExecutionResult:
        """One cell of Python in the session's kernel (started if it is not running).
        Never raises for the code's own failure; SandboxError if the sandbox dies."""
        try:
            timeout = self.spec.limits.timeout if request.timeout is None else parse_timeout(request.timeout)
        except SpecError as exc:
            self.audit.refused("execute", str(exc))
            raise
        result = _kernel.execute(self, request, timeout, events)
        self.audit.execution(result)
        return result

    # -- files of the workspace --------------------------------------------------------------
    def file_op(self, request: FileRequest) -> FileReply:
        """A workspace file operation; SecurityError for a path that leaves the workspace or
        crosses a symlink (also logged), OSError for the rest (no such file...)."""
        if not self.alive or self.workspace is None:
            raise SandboxError("the sandbox is not running")
        try:
            if request.op == "read":
                return FileReply(data=base64.b64encode(self.workspace.read(request.path)).decode("ascii"))
            if request.op == "write":
                data = base64.b64decode(request.data or "", validate=True)
                self.workspace.write(request.path, data, request.mode)
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
        """The next message from init; the kernel's end is noted whenever it arrives."""
        if self.ctl is None:
            return None
        try:
            got = self.ctl.read_packet()
        except EOFError:
            return None  # init is gone; the intermediate's pidfd will say so
        message = None if got is None else parse(got[0], Started, Exited)
        if isinstance(message, Exited) and message.process == KERNEL:
            self.kernel.exited(message)
        return message

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Kill the sandbox and wait until every process of it is gone. Idempotent.

        Init is killed, not the intermediate: the intermediate then reaps init and
        exits, and we reap it, so no zombie is left to the host's init to collect."""
        if self.alive:
            self.audit.closed()
        self.alive = False
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
        if self._proxy_fd is not None:  # its socket in the sandbox's namespace keeps that alive
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._proxy_fd, signal.SIGKILL)
            os.close(self._proxy_fd)
            self._proxy_fd = None
        if self._proxy_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._proxy_pid, 0)
            self._proxy_pid = None
        self.kernel.exited(None)  # with the sandbox (if it had not ended already)
        self.kernel.close()
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
        self.audit.close()


def _killed_by_cpu_rlimit(exited: Exited | None) -> bool:
    return (
        exited is not None
        and os.WIFSIGNALED(exited.wait_status)
        and os.WTERMSIG(exited.wait_status) in (signal.SIGXCPU, signal.SIGKILL)
    )


@contextlib.contextmanager
def _setup_stage(stage: str, call: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        call = getattr(exc, "call", call)
        args = getattr(exc, "call_args", None) or str(exc.filename or "")
        raise SetupError(stage, call, args, exc.errno, remedy_for(stage, call, exc.errno)) from exc
