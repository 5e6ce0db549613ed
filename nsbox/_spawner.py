"""The spawner: one fresh single-threaded helper per embedding process (a zygote).

The caller's interpreter may run threads or an event loop, so it is never forked into
namespaces. Instead, on first use, ``Spawner.get()`` starts ``python -I`` running
``main()`` below, which imports everything a supervisor needs once; each new sandbox's
supervisor is then a fork of that helper (about a millisecond), handed the far end of
a socket pair that becomes its session with the front-end.

The helper leaves when the front-end's end of its socket closes (the front-end process
exited); each supervisor leaves when its session socket closes. Neither depends on
signals to find out.
"""

from __future__ import annotations

import atexit
import gc
import os
import select
import signal
import socket
import subprocess  # nosec B404  # starts our own helper: fixed argv, no shell
import sys
import threading
import time

from . import _session
from ._cgroup import sweep_all
from ._channel import Channel, socketpair
from ._errors import ProtocolError
from ._fds import child_wakeup, close_fds, drain
from ._protocol import Spawn, Spawned, parse
from ._protocol import warm as warm_protocol
from ._seccomp import compile_filters
from ._spec import Seccomp

_MAX_FRAME = 4096
SPAWN_TIMEOUT = 30.0
#: After a supervisor was killed: how often, and how long, to retry removing its cgroups
#: (they can go only once the sandbox's last process has exited).
SWEEP_INTERVAL = 0.05
SWEEP_PATIENCE = 10.0


def main(fd: int) -> None:
    """The helper's loop (runs in the helper process): spawn supervisors, reap them, and
    sweep the cgroups of any that was killed before it could remove its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's Ctrl-C is the caller's business
    compile_filters(Seccomp())  # once, here: every supervisor forked from us finds it compiled
    _preload()
    wake_r, wake_w = child_wakeup()
    channel = Channel(socket.socket(fileno=fd), _MAX_FRAME)
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    sweep_until: float | None = None
    while True:
        wait = None if sweep_until is None else SWEEP_INTERVAL * 1000
        for ready, _ in poller.poll(wait):
            if ready == wake_r:
                drain(wake_r)
                if _reap_killed():
                    sweep_until = time.monotonic() + SWEEP_PATIENCE
            else:
                try:
                    got = channel.read_packet()
                except EOFError:
                    return
                if got is not None:
                    _spawn(channel, parse(got[0], Spawn), got[1], (wake_r, wake_w))
        if sweep_until is not None and (sweep_all() or time.monotonic() > sweep_until):
            sweep_until = None  # clean, or whatever is left waits for the next sweep


def _preload() -> None:
    """Import here, once, what a supervisor would otherwise import on first use, in every
    fork (the allowlist's parser took ~9 ms of each new sandbox's start); then freeze
    what exists, so that no collection in a fork walks (and copies) the pages we share."""
    import encodings.ascii  # noqa: F401  # the cgroup files are read as ASCII
    import pwd  # noqa: F401  # rootless: the user's name for /etc/subuid

    from . import _netpolicy, _programs, _proxy  # noqa: F401  # every spec parses its network policy; run_code
    from ._rootfs import _store  # noqa: F401  # --rootfs NAME

    warm_protocol()
    gc.collect()
    gc.freeze()


def _spawn(channel: Channel, request: Spawn, fds: list[int], own_fds: tuple[int, int]) -> None:
    if len(fds) != 1:
        close_fds(fds)
        return
    if request.routed:
        from ._routed._router import preload

        preload()
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor waits for its own children
        close_fds(own_fds)
        channel.close()
        try:
            _session.serve_session(socket.socket(fileno=fds[0]))
        finally:
            os._exit(0)
    os.close(fds[0])
    pidfd = os.pidfd_open(pid)  # before we could reap it: this pid is the supervisor's
    try:
        channel.send(Spawned(pid), [pidfd])
    finally:
        os.close(pidfd)


def _reap_killed() -> bool:
    """Reap every ended supervisor; True if one was killed by a signal (it could not
    remove its cgroups; its sandbox dies by parent-death signals meanwhile)."""
    killed = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid == 0:
            return killed
        killed = killed or os.WIFSIGNALED(status)


class Spawner:
    """The front-end's handle on its helper; one per process, shared by threads."""

    _lock = threading.Lock()
    _instance: Spawner | None = None

    def __init__(self) -> None:
        ours, theirs = socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            f"from nsbox._spawner import main; main({theirs.fileno()})"
        )
        self.process = subprocess.Popen(  # nosec B603  # our own interpreter and code, no shell
            [sys.executable, "-I", "-c", boot],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self.pid = os.getpid()
        self.channel = Channel(ours, _MAX_FRAME)
        atexit.register(self.shutdown)

    @classmethod
    def get(cls) -> Spawner:
        with cls._lock:
            current = cls._instance
            if current is None or current.pid != os.getpid() or current.process.poll() is not None:
                cls._instance = current = cls()
            return current

    def spawn(self, routed: bool = False) -> tuple[socket.socket, int, int]:
        """A new supervisor: (our end of its session socket, its pid, a pidfd of it);
        ``routed``: for a sandbox with a routed network (``Spawn``)."""
        ours, theirs = socketpair()
        try:
            with self._lock:
                self.channel.send(Spawn(routed=routed), [theirs.fileno()])
                spawned, fds = self.channel.recv(Spawned, timeout=SPAWN_TIMEOUT)
            if len(fds) != 1:
                close_fds(fds)
                raise ProtocolError("spawned must carry exactly one pidfd")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours, spawned.pid, fds[0]

    def shutdown(self) -> None:
        if self.pid != os.getpid():
            return
        self.channel.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
