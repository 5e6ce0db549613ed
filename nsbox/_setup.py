"""Setting a sandbox up, the supervisor's side: the table of contents of ``start``.

Reserve a host id range (root), create the cgroup, start the intermediate already in its
new namespaces (clone: nothing to wait for), open the namespaces we enter later, write the
id maps while it sets itself up, hand over the bind sources (root), put the
processes in the cgroup while init builds the root, take init's workspace handle, start
the egress proxy, (subordinate ids) join the sandbox's user namespace, and keep no
supplementary group the payload has not (the file API acts as the payload). Every failure
becomes a SetupError naming the stage; init's own report of a failed step wins over what
the intermediate saw, being more precise. A mixin of ``Supervisor``, which holds the
state and the teardown (``close``) that a failed set-up ends with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import TypeVar

from . import _caps, _child, _linux, _mount, _trace, _userns
from ._audit import AuditLog
from ._cgroup import Cgroup, CgroupGuard
from ._channel import Channel, readable, socketpair
from ._child import SandboxPlan
from ._errors import ProtocolError, SandboxError, SetupError
from ._fds import close_fds
from ._files import Workspace
from ._host import remedy_for
from ._protocol import (
    MAX_FRAME_FROM_SANDBOX,
    Attached,
    Go,
    InitReady,
    InitStarted,
    Message,
    StepFailed,
    parse,
)
from ._spec import SandboxSpec

SETUP_TIMEOUT = 30.0
M = TypeVar("M", bound=Message)


class SandboxSetup:
    spec: SandboxSpec
    plan: SandboxPlan
    cgroup: Cgroup
    audit: AuditLog
    workspace: Workspace | None
    alive: bool
    ctl: Channel | None
    intermediate_fd: int | None
    _guard: CgroupGuard | None
    _intermediate_pid: int | None
    _init_fd: int | None
    _sync: Channel | None
    _id_range_hold: socket.socket | None
    _egress_pid: int | None
    _egress_fd: int | None
    _root_hold: int | None

    def close(self) -> None:
        raise NotImplementedError  # the Supervisor's teardown

    def _check_root_held(self) -> None:
        """The root init bound must be the one we hold: replaced in between, it could be the
        new tree, which nothing keeps. Rare (a rebuild in the milliseconds of a start): refused."""
        if self._root_hold is None or self.spec.rootfs is None:
            return
        from ._rootfs._store import still_held

        if not still_held(self._root_hold, self.spec.rootfs):
            raise SetupError(
                "hold the root filesystem",
                detail=f"{self.spec.rootfs} was replaced while the sandbox started",
                remedy="start the sandbox again",
            )

    def start(self) -> None:
        if self.spec.rootfs is not None:  # a stored root is kept while we use it (_rootfs/_store.py)
            from ._rootfs._store import hold

            with _setup_stage("hold the root filesystem", "flock"):
                self._root_hold = hold(self.spec.rootfs)
        if self.spec.network.mode == "routed" and not self.plan.mapping.privileged:
            raise SetupError(
                "start the routed network",
                detail="network 'routed' builds a veth pair and nftables rules outside the sandbox, which needs root",
                remedy="run nsbox as root for --net routed, or use --net allow (the egress proxy) as an ordinary user",
            )
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
            with _setup_stage("start the intermediate in new namespaces", "clone"):
                pid, sync, ctl = self._fork_intermediate()
            # Opened now, while the intermediate is a dumpable copy of us: once init runs,
            # /proc/<pid>/ns and setns through its pidfd need ptrace access to a
            # non-dumpable process, which only root has. The egress proxy enters the net
            # namespace (rootless through A: setns(2) wants CAP_SYS_ADMIN in the caller's
            # own user namespace too); join_from_parent enters A.
            mapping = self.plan.mapping
            mode = self.spec.network.mode
            allow = mode == "allow"
            with _setup_stage("open the sandbox's namespaces", "open"):
                if mode != "none":
                    ns_fds["net"] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                if mapping.mode == "subordinate" or (allow and not mapping.privileged):
                    ns_fds["user"] = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            if mapping.caller_payload:
                # Keep-id: the intermediate becomes a subordinate id at Go, and a v1 cgroup
                # takes a task only from its own uid (cgroup-v1.rst), so it moves now; init,
                # forked after Go, is born in the cgroup. The move's RCU wait is not hidden.
                with _setup_stage("put the sandbox in its cgroup", "write"):
                    self.cgroup.attach(pid)
            with _setup_stage("write the sandbox's id maps", "write"):
                try:
                    _userns.write_outer_maps_from_parent(pid, mapping)
                except OSError as exc:  # the intermediate may have failed first: its report is the cause
                    reported = self._report_on(self._sync)
                    if reported is None:
                        raise
                    raise reported from exc
            source_fds: list[int] = []
            if self.plan.mapping.privileged:
                with _setup_stage("open the bind sources", "open"):
                    idmapped = self.plan.root.writable_binds  # as root, each an idmapped mount
                    owner = self.spec.bind_owner or (os.getuid(), os.getgid())
                    userns = _userns.idmap_namespace(owner, mapping.payload_host_ids) if idmapped else -1
                    try:
                        source_fds, trees = _mount.open_sources_from_parent(
                            pid, self.plan.root.sources, idmapped, userns
                        )
                    finally:
                        if userns >= 0:
                            os.close(userns)
                    source_fds += trees  # after the sources, in the order of writable_binds
            try:
                with _setup_stage("start the sandbox's init", "send"):
                    sync.send(Go(), source_fds, deadline=time.monotonic() + SETUP_TIMEOUT)
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
                    # (Keep-id moved the intermediate before the maps, init with it.)
                    if not mapping.caller_payload:
                        self.cgroup.attach(pid)
                        self.cgroup.attach(started.pid)
                ctl.send(Attached(), deadline=time.monotonic() + SETUP_TIMEOUT)
            except (OSError, SetupError) as exc:  # init may have failed meanwhile: its report is the cause
                reported = self._report_on(self.ctl)
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
            self._check_root_held()
            if allow:
                from . import _proxy  # only for sandboxes with a way out

                with _setup_stage("start the egress proxy", "fork"):
                    self._egress_pid, self._egress_fd = _proxy.start(
                        self.spec.network, ns_fds["net"], ns_fds.get("user"), self.audit
                    )
            elif mode == "routed":
                from ._routed import _router  # only for sandboxes with a routed interface

                with _setup_stage("start the router", "fork"):
                    self._egress_pid, self._egress_fd = _router.start(self.spec.network, ns_fds["net"], self.audit)
            if mapping.mode == "subordinate":
                with _setup_stage("join the sandbox's user namespace", "setns"):
                    _userns.join_from_parent(ns_fds["user"])
            with _setup_stage("drop the supplementary groups", "setgroups"):
                _userns.drop_groups_from_parent(mapping)
            if mapping.mode == "subordinate":
                with _setup_stage("drop the capabilities the user namespace gave", "capset"):
                    _caps.keep_supervisors_from_parent()
        except BaseException as exc:
            self.audit.failed(exc if isinstance(exc, Exception) else SandboxError(type(exc).__name__))
            self.close()
            raise
        finally:
            close_fds(list(ns_fds.values()))
        self.alive = True
        self.audit.created(self.spec, self.cgroup.kind)

    def _fork_intermediate(self) -> tuple[int, Channel, Channel]:
        """The intermediate's pid, and our ends of its setup (sync) and control channels.
        It is born in the sandbox's namespaces (``_child.BORN_IN``) without our
        supplementary groups, which would stay host groups inside: as root they are set
        aside for the clone and restored (A's setgroups is "deny" once its maps are written,
        so the intermediate could not drop them itself)."""
        sync_parent, sync_child = socketpair()
        ctl_parent, ctl_child = socketpair()
        groups = os.getgroups() if os.geteuid() == 0 else []
        if groups:
            os.setgroups([])
        pid = -1  # until the clone returns: in this process, restore the groups whatever happens
        try:
            pid = _linux.fork_into(_child.BORN_IN)
        except BaseException:
            for sock in (sync_parent, sync_child, ctl_parent, ctl_child):
                sock.close()
            raise
        finally:
            if groups and pid != 0:  # ours again; the child keeps none
                os.setgroups(groups)
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
        reported = self._report_on(self.ctl)
        if reported is not None:
            return reported
        if isinstance(failure, str):
            return SetupError("sandbox setup", detail=failure + self._exit_detail())
        return self._step_error(failure)

    def _report_on(self, channel: Channel | None) -> SetupError | None:
        """The StepFailed a sandbox process sent on ``channel`` before it exited, if it did
        (init on ``ctl``, the intermediate on ``sync``)."""
        with contextlib.suppress(EOFError, ProtocolError, OSError):
            while channel is not None and readable(channel.fileno()):
                got = channel.read_packet()
                if got is not None:
                    close_fds(got[1])
                    if got[0].get("type") == StepFailed.TYPE:
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


@contextlib.contextmanager
def _setup_stage(stage: str, call: str) -> Iterator[None]:
    try:
        with _trace.timed(stage):
            yield
    except OSError as exc:
        call = getattr(exc, "call", call)
        args = getattr(exc, "call_args", None) or str(exc.filename or "")
        raise SetupError(stage, call, args, exc.errno, remedy_for(stage, call, exc.errno)) from exc
