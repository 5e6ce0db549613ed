"""The ordered steps inside the namespaces: read top to bottom, the table of contents
of a sandbox. Three processes run them, each forked from the one above:

``intermediate_main``  born in the new user, mount, net, uts and ipc namespaces
                       (``_linux.fork_into``); waits while the supervisor writes its id
                       maps; unshares the pid namespace; forks init; writes init's
                       nested id maps; lives exactly as long as init
``init_main``          PID 1: builds the root, enters the nested user namespace,
                       then serves runs (``_init.serve``)
``payload_main``       forked by init per run; ends in execve. With ``warm``: run_code's
                       warm interpreter, as a payload but uid 0 of the nested namespace
                       with ``_caps.WARM`` (``_guest/warm.py``)

Each step runs inside ``step(name)``: a failure becomes a StepFailed message naming the
step, the system call, its arguments and errno, and the process exits 125. These
processes never return into the caller's code: they leave with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import signal
import socket
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import prctl

from . import _caps, _init, _launcher, _linux, _mount, _net, _rlimits, _trace, _userns, _uts
from ._channel import Channel
from ._fds import close_all_but, close_fds, stdio_to_devnull
from ._mount import RootPlan
from ._protocol import (
    MAX_FRAME_FROM_SANDBOX,
    MAX_FRAME_TO_INIT,
    Attached,
    Exec,
    Go,
    InitReady,
    InitStarted,
    StepFailed,
)
from ._spec import WORKSPACE, SandboxSpec
from ._userns import IdMapping

#: The namespaces the intermediate is born in; the pid namespace comes after its id maps
#: (it is its children's: init is PID 1 of it), the cgroup namespace with init.
BORN_IN = _linux.CLONE_NEWUSER | _linux.CLONE_NEWNS | _linux.CLONE_NEWNET | _linux.CLONE_NEWUTS | _linux.CLONE_NEWIPC
EXIT_SETUP_FAILED = 125
_DEBUG = bool(os.environ.get("NSBOX_DEBUG"))


@dataclass(frozen=True)
class SandboxPlan:
    """Everything the children need, computed by the supervisor before it forks."""

    spec: SandboxSpec
    mapping: IdMapping
    root: RootPlan
    last_cap: int
    supervisor_pid: int
    rlimits: tuple[tuple[int, int], ...]
    seccomp_filters: tuple[bytes, ...]  #: compiled BPF, loaded in order; none when unconfined

    @property
    def launcher(self) -> bool:
        """Whether runs start from the launcher (``_launcher``), or each is forked by init."""
        return not _rlimits.binds_payload_only(self.rlimits)

    @property
    def own_processes(self) -> int:
        """nsbox's processes in the sandbox's cgroup: the intermediate, init, the launcher."""
        return 3 if self.launcher else 2


class _StepFailed(Exception):
    def __init__(self, message: StepFailed) -> None:
        super().__init__(message.stage)
        self.message = message


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    try:
        with _trace.timed(name):
            yield
    except _StepFailed:
        raise
    except BaseException as exc:
        err = getattr(exc, "errno", None)
        raise _StepFailed(
            StepFailed(
                stage=name,
                call=getattr(exc, "call", ""),
                args=getattr(exc, "call_args", "") or str(getattr(exc, "filename", "") or ""),
                errno=err if isinstance(err, int) else None,
                detail=str(exc)[:2000],
            )
        ) from exc


# --- the intermediate -----------------------------------------------------------------------
def intermediate_main(plan: SandboxPlan, sync_sock: socket.socket, ctl_sock: socket.socket) -> NoReturn:
    gc.disable()  # no finalizer of the parent's objects may run (and close a reused fd) here
    sync = Channel(sync_sock, MAX_FRAME_FROM_SANDBOX)
    try:
        with step("die with the supervisor"):
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != plan.supervisor_pid:
                os._exit(EXIT_SETUP_FAILED)
        with step("close inherited file descriptors"):
            close_all_but(0, 1, 2, sync_sock.fileno(), ctl_sock.fileno())
            # Init would otherwise hold the caller's stdio for the sandbox's whole life.
            stdio_to_devnull(keep_stderr=_DEBUG)
        with step("start a new session"):
            # Own session and process group: a kill(0, ...) from inside can never
            # reach the supervisor's group, nor the caller's terminal.
            os.setsid()
        with step("join a new session keyring"):
            _linux.join_new_session_keyring()
        with step("wait for the supervisor to write our id maps"):
            _, source_fds = sync.recv(Go)  # as root, the bind sources come along
        with step("open the bind sources"):
            if not plan.mapping.privileged:  # with the caller's permissions, before our uid changes
                source_fds = _mount.open_sources(plan.root.sources)
            idmapped = plan.root.writable_binds if plan.mapping.privileged else ()
            if len(source_fds) != len(plan.root.sources) + len(idmapped):
                raise OSError(22, "the number of bind sources does not match the plan")
            count = len(plan.root.sources)
            sources = dict(zip((path for path, _ in plan.root.sources), source_fds[:count], strict=True))
            idmapped_trees = dict(zip(idmapped, source_fds[count:], strict=True))
        with step("become root of the sandbox's user namespace"):
            _userns.become_root_in_child(plan.mapping)
            # A change of euid clears the parent-death signal (prctl(2)): set it again.
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != plan.supervisor_pid:
                os._exit(EXIT_SETUP_FAILED)
        with step("unshare the pid namespace"):
            _linux.unshare(_linux.CLONE_NEWPID)  # owned by A: we are its root now
        with step("set the hostname"):
            _uts.set_names_in_child(plan.spec.hostname)
        with step("bring up the loopback interface"):
            _net.loopback_up_in_child()
        with step("fork init"):
            # Init's pivot_root moves our root too (we share its mount namespace), so the
            # host's /proc is held by an fd from before the fork.
            host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            request_r, request_w = os.pipe()
            reply_r, reply_w = os.pipe()
            init_pid = os.fork()
            if init_pid == 0:
                os.close(request_r)
                os.close(reply_w)
                sync_sock.close()
                os.close(host_proc)
                init_main(plan, ctl_sock, sources, idmapped_trees, request_w, reply_r)
            os.close(request_w)
            os.close(reply_r)
            ctl_sock.close()
            for fd in (*sources.values(), *idmapped_trees.values()):
                os.close(fd)
        with step("watch init"):
            pidfd = os.pidfd_open(init_pid)
            proc_dir = os.open(str(init_pid), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=host_proc)
            os.close(host_proc)
        sync.send(InitStarted(init_pid), [pidfd])
        os.close(pidfd)
        with step("write init's nested id maps"):
            _userns.serve_nested_maps_from_parent(plan.mapping, proc_dir, request_r, reply_w)
        os.close(proc_dir)
        _, status = os.waitpid(init_pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    except BaseException as exc:  # a child must never unwind into the parent's code
        _report_and_exit(sync, exc)


# --- init (PID 1) -----------------------------------------------------------------------
def init_main(
    plan: SandboxPlan,
    ctl_sock: socket.socket,
    sources: dict[str, int],
    idmapped_trees: dict[_mount.Bind, int],
    request_fd: int,
    reply_fd: int,
) -> NoReturn:
    """``sources``: O_PATH fds of the bind sources, by path; ``idmapped_trees``: as root, the
    supervisor's idmapped copies of the writable binds (attached as they are)."""
    ctl = Channel(ctl_sock, MAX_FRAME_TO_INIT)
    root = plan.root
    try:
        with step("die with the intermediate"):
            # Should the intermediate die before this, init notices when it reads the
            # intermediate's reply to its map request (EOF) and gives up.
            prctl.set_pdeathsig(signal.SIGKILL)
            _init.ignore_signals()
        with step("make every mount private"):
            _mount.make_private_in_child()
        with step("enter the new root (tmpfs)"):
            _mount.enter_staging_in_child()
        with step("create the root's directories, links and /etc files"):
            _mount.create_skeleton_in_child(root)
        for bind in root.system_binds:
            with step(f"bind {bind.target} read-only"):
                _mount.bind_in_child(bind, sources[bind.source])
        with step("mount /proc"):
            # While the host's /proc is still attached at /.old/proc: a user namespace
            # may mount proc only where one is already fully visible.
            _mount.mount_proc_in_child()
        with step("limit user namespaces to the nested one"):
            _userns.limit_nesting_in_child()  # before /proc/sys becomes read-only
        with step("mount /dev"):
            _mount.mount_dev_in_child(sources)
        with step("mask /proc"):
            _mount.mask_proc_in_child(sources)
        with step("mount /tmp and /workspace"):
            _mount.mount_scratch_in_child(root)
        user_trees = []
        for bind in root.user_binds:
            with step(f"clone {bind.source} for {bind.target}"):
                if bind in idmapped_trees:  # the supervisor's idmapped copy, attached as it is
                    user_trees.append(idmapped_trees.pop(bind))
                else:
                    user_trees.append(_mount.clone_in_child(bind, sources[bind.source]))
        with step("detach the host's root"):
            for fd in sources.values():
                os.close(fd)
            _mount.detach_old_root_in_child()
        for bind, tree in zip(root.user_binds, user_trees, strict=True):
            # Attached after the detach: no target can lead into the host's tree.
            with step(f"bind {bind.source} to {bind.target}"):
                _mount.attach_in_child(bind, tree)
                os.close(tree)
        with step("make / and /dev read-only"):
            _mount.seal_in_child()
        with step("enter the nested user namespace (locks every mount)"):
            _userns.enter_nested_in_child(plan.mapping, request_fd, reply_fd)
            os.close(request_fd)
            os.close(reply_fd)
            prctl.set_pdeathsig(signal.SIGKILL)  # robust against any credential change above
        with step("wait for the supervisor to put us in our cgroup"):
            close_fds(ctl.recv(Attached)[1])  # the supervisor's setup timeout bounds the wait
        with step("unshare the cgroup namespace"):
            # After the supervisor placed us in our cgroup, so that it is the namespace's root.
            _linux.unshare(_linux.CLONE_NEWCGROUP)
        with step("name init"):
            prctl.set_name("nsbox-init")
            _linux.set_cmdline("nsbox-init")  # the inherited command line may show host paths
            os.chdir("/")
        with step("open /workspace for the supervisor's file API"):
            workspace = os.open(WORKSPACE, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        ctl.send(InitReady(), [workspace])  # before any payload: this is the real one
        os.close(workspace)
        _init.serve(
            ctl,
            lambda request, fds, errpipe: payload_main(plan, request, fds, errpipe),
            (lambda sock: launcher_main(plan, sock)) if plan.launcher else None,
            lambda request, fds, errpipe: payload_main(plan, request, fds, errpipe, warm=True),
        )
        os._exit(0)
    except BaseException as exc:  # a child must never unwind into the parent's code
        _report_and_exit(ctl, exc)


# --- the launcher --------------------------------------------------------------------------
def launcher_main(plan: SandboxPlan, sock: socket.socket) -> NoReturn:
    """Forked by init; the payload's privilege for good, then it starts every run
    (``_launcher``). The same steps as ``payload_main``, once per sandbox; a failure is
    reported as StepFailed (init gives it to the runs waiting) and the process exits."""
    channel = Channel(sock, MAX_FRAME_TO_INIT)
    try:
        with step("name the launcher"):
            prctl.set_name("nsbox-launcher")
            _linux.set_cmdline("nsbox-launcher")  # what ps shows the payloads (they share its uid)
        with step("start a new session"):
            os.setsid()
        with step("close inherited file descriptors"):
            close_all_but(0, 1, 2, sock.fileno())  # init's stdio is /dev/null already
        with step("leave init's signal wake-up and directory"):
            # Init's ignored signals stay ignored here (a payload's SIGTERM or SIGTSTP to us
            # does nothing); every payload gets all of them at their default (_linux.spawn).
            signal.set_wakeup_fd(-1)
            os.chdir("/")
        for name, take in _payload_privilege(plan):  # the rlimits here may bind us too (see _init)
            with step(name):
                take()  # the seccomp filter last: from here on every payload inherits it
        _launcher.serve(channel)
        os._exit(0)
    except BaseException as exc:  # a child must never unwind into the parent's code
        _report_and_exit(channel, exc)


# --- the payload ---------------------------------------------------------------------------
def payload_main(plan: SandboxPlan, request: Exec, stdio: list[int], errpipe: int, warm: bool = False) -> NoReturn:
    """Forked by init for one run (or ``warm``: for the warm interpreter). Every step before
    execve is reported through ``errpipe`` (close-on-exec: EOF means execve succeeded)."""
    stage = "setsid"
    try:
        os.setsid()  # no controlling terminal: TIOCSTI cannot type into the caller's (CVE-2017-5226)
        stage = "install stdin, stdout and stderr"
        _install_stdio(stdio, errpipe)
        stage = "reset signal dispositions"
        signal.set_wakeup_fd(-1)  # init's, inherited through fork
        _linux.reset_all_signals()  # ignored ones would survive execve
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        stage = "chdir"
        os.chdir(request.cwd)
        for stage, take in _payload_privilege(plan, warm):  # noqa: B007  # the except clauses report `stage`
            take()  # the seccomp filter last: from here on, only execve and error reporting
        stage = "execve"
        os.execvpe(request.argv[0], request.argv, request.env)  # nosec B606  # running the payload is the point
    except OSError as exc:
        _report_payload_failure(stage, exc.errno or 0)
    except BaseException:  # a child must never unwind into the parent's code
        _debug_trace()
        _report_payload_failure(stage, 0)
    os._exit(127)


def _payload_privilege(plan: SandboxPlan, warm: bool = False) -> Iterator[tuple[str, Callable[[], object]]]:
    """The steps, in order, that leave a process with exactly a payload's privilege, each
    with the stage name a failure reports: a payload forked by init takes them before its
    execve, the launcher once (every payload it starts inherits the result). ``warm``: the
    warm interpreter's, which differ in two: it stays uid 0 with ``_caps.WARM`` (it makes
    each program a payload of the program uid), and it is not the OOM killer's first
    choice (its programs are, each by its own step)."""

    def first_for_the_oom_killer() -> None:
        # In the sandbox's cgroup and on the host, so that it takes the payload and not
        # init (which would end the sandbox). Raising one's own score needs no privilege;
        # lowering init's would need CAP_SYS_RESOURCE. /proc/self of a non-dumpable process
        # belongs to host root: dumpable for the write (still uid 0 here, so no payload
        # process can trace us; the uid change next makes us non-dumpable again).
        prctl.set_dumpable(True)
        _userns.write_proc_file(0, "oom_score_adj", "1000")

    def drop_capabilities() -> None:
        _caps.drop_bounding_in_child(plan.last_cap)
        _userns.become_payload_in_child()
        _caps.clear_sets_in_child()
        _caps.assert_none_in_child()
        prctl.set_dumpable(False)  # whatever fs.suid_dumpable says: payloads share our uid now

    def load_seccomp() -> None:
        for bpf in plan.seccomp_filters:
            _linux.load_seccomp_filter(bpf)

    yield "set resource limits", lambda: _rlimits.apply_in_child(plan.rlimits)
    if warm:
        yield "keep only the capabilities of the warm interpreter", lambda: _caps.keep_only_in_child(plan.last_cap)
    else:
        yield "make the OOM killer's first choice", first_for_the_oom_killer
        yield "drop capabilities", drop_capabilities
    yield "join a new session keyring", _linux.join_new_session_keyring  # owned by the payload's uid
    yield "set the parent-death signal", lambda: prctl.set_pdeathsig(signal.SIGKILL)  # the uid change cleared it
    yield "set no_new_privs", lambda: prctl.set_no_new_privs(1)  # also what lets us load a filter unprivileged
    yield "load the seccomp filter", load_seccomp  # last


def _report_and_exit(channel: Channel, exc: BaseException) -> NoReturn:
    """A set-up step's failure goes to the channel's reader; anything else is a bug of ours."""
    if isinstance(exc, _StepFailed):
        with contextlib.suppress(OSError):
            channel.send(exc.message)
    else:
        _debug_trace()
    os._exit(EXIT_SETUP_FAILED)


def _debug_trace() -> None:
    """An unexpected exception (a bug of ours): shown on stderr when NSBOX_DEBUG is set."""
    if _DEBUG:
        with contextlib.suppress(OSError):
            os.write(2, traceback.format_exc().encode())


def _report_payload_failure(stage: str, err: int) -> None:
    with contextlib.suppress(OSError):
        os.write(3, json.dumps({"stage": stage, "errno": err}).encode())


def _install_stdio(stdio: list[int], errpipe: int) -> None:
    """stdio -> 0, 1, 2 and errpipe -> 3 (close-on-exec); every other fd closed
    (no fd of ours leaks into the payload, runc CVE-2024-21626)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (*stdio, errpipe)]
    for target, fd in enumerate(high[:3]):
        os.dup2(fd, target, inheritable=True)
    os.dup2(high[3], 3, inheritable=False)
    os.closerange(4, 1 << 20)
