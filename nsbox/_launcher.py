"""The launcher: the process inside a sandbox that starts its runs.

Init forks it once (``_child.launcher_main`` takes it to the payload's privilege for good:
uid 1000, no capabilities, no_new_privs, the rlimits, its own session keyring, the seccomp
filter loaded), then hands it each run's ``Exec`` and stdio. It starts the run with
posix_spawn(3) (``_linux.spawn``), which glibc does with a vfork-like clone: no copy of
this process's page tables and nothing of Python runs in the child, so a run costs an
execve, not a fork of a Python process plus the privilege steps (~5 ms before; see
scripts/bench.py).

Everything a payload inherits from here is already what a payload may have: the child
only gets a session of its own (``setsid``, no controlling terminal), its cwd, its stdio
(every other fd of ours is close-on-exec), every signal at its default action and an
empty signal mask.

It reports to init ``Started`` (the payload's pid), or ``Exited`` at once for a run that
could not be started (the errno and stage of chdir or execve), and ``Exited`` when a payload
ends: the status is read with WNOWAIT first and reaped only after the report went out, so
if this process dies at any moment, a payload it has not reported is reparented to init
(PID 1) and init reaps and reports it. Init treats what comes from here as untrusted: this
process runs at the payload's privilege, and the payload could kill it, or stop it.

Runs whose rlimits must not bind this process (a CPU-time limit, and with --no-cgroups the
address space and process count) are forked by init as before (``_child.payload_main``).
"""

from __future__ import annotations

import os
import select

from . import _linux
from ._channel import Channel
from ._fds import child_wakeup, close_fds, drain
from ._protocol import Exec, Exited, Started, parse

#: The wait status of a run that never reached execve (as a failed payload_main exits).
NOT_STARTED = 127 << 8


def serve(channel: Channel) -> None:
    """Until init's end of the channel closes (then the kernel ends our payloads with the
    sandbox, or they live on as init's children)."""
    wake_r, _ = child_wakeup()
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    kinds: dict[int, int] = {}  # pid -> process kind (RUN, KERNEL)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                drain(wake_r)
                _report_ended(channel, kinds)
                continue
            try:
                got = channel.read_packet()
            except EOFError:
                return
            if got is None:
                continue
            obj, fds = got
            try:
                request = parse(obj, Exec)
            except BaseException:
                close_fds(fds)
                raise
            if len(fds) != 3:
                close_fds(fds)
                channel.send(Exited(NOT_STARTED, 22, "receive stdin, stdout and stderr", request.process))
                continue
            try:
                pid = start(request, fds)
            except OSError as exc:
                channel.send(Exited(NOT_STARTED, exc.errno or 0, getattr(exc, "stage", "execve"), request.process))
                continue
            finally:
                close_fds(fds)
            kinds[pid] = request.process
            channel.send(Started(pid, request.process))


class _StageError(OSError):
    stage = "chdir"


def start(request: Exec, stdio: list[int]) -> int:
    """posix_spawn the run, searching PATH as os.execvpe does (the first directory whose
    file can be executed; another error than ENOENT/ENOTDIR is kept and raised if no
    directory works). Raises OSError (``stage`` names the step) if it could not start."""
    try:
        os.chdir("/")  # a relative cwd is relative to / (as for a payload forked by init)
        os.chdir(request.cwd)
    except OSError as exc:
        raise _StageError(exc.errno, exc.strerror) from None
    argv, env = request.argv, request.env
    if not argv:
        raise OSError(22, "empty argv")
    search = not os.path.dirname(argv[0])
    candidates = [os.path.join(d, argv[0]) for d in os.get_exec_path(env)] if search else [argv[0]]
    saved: OSError | None = None
    last: OSError = FileNotFoundError(2, "No such file or directory")
    for path in candidates:
        try:
            return _linux.spawn(path, argv, env, stdio)
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
        except OSError as exc:
            last = exc
            saved = saved or exc
    raise saved or last


def _report_ended(channel: Channel, kinds: dict[int, int]) -> None:
    """Report, then reap, each ended payload (WNOWAIT: see the module's docstring)."""
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None or ended.si_pid == 0:
            return
        pid = ended.si_pid
        if ended.si_code == os.CLD_EXITED:
            status = (ended.si_status & 0xFF) << 8
        else:  # CLD_KILLED, CLD_DUMPED
            status = ended.si_status | (0x80 if ended.si_code == os.CLD_DUMPED else 0)
        kind = kinds.pop(pid, None)
        if kind is not None:
            channel.send(Exited(status, None, None, kind))
        os.waitpid(pid, 0)
