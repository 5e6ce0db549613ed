"""cgroup v2: one directory holds every controller.

memory.max, memory.swap.max = 0, pids.max, cpu.max; usage from cpu.stat (usage_usec),
memory.peak, memory.events (oom_kill), pids.events (max); cgroup.kill to end it all.
The controllers are enabled in cgroup.subtree_control of our own cgroup and of nsbox/.
The "no internal processes" rule forbids that in a (non-root) cgroup holding processes,
which a delegated cgroup does: the one nsbox was started in (systemd-run --user --scope
-p Delegate=yes, a service with Delegate=yes). There, and only if it is delegated to us
(ours, or marked with systemd's trusted.delegate/user.delegate), its processes are moved
one level down into ``nsbox-caller`` (within the subtree they started in), as systemd's
delegation rules ask of a delegatee; elsewhere the refusal names the remedy.

memory.peak is reset per run by writing to it (Linux 6.12+, where the reset is seen
through the same open file); on older kernels the peak is the sandbox's since it began,
which for a one-shot run is the run's.
"""

from __future__ import annotations

import contextlib
import errno
import os

from ._base import (
    CPU_PERIOD_US,
    NSBOX_DIR,
    Cgroup,
    CgroupLimits,
    Counters,
    Usage,
    cpu_quota_us,
    keyed,
    kill_procs,
    make_sandbox_dir,
    read_text,
    remove_dir,
    sweep_stale,
    write_text,
)
from ._layout import CALLER_LEAF, Placement


class CgroupV2(Cgroup):
    kind = "cgroup v2"

    def __init__(self, limits: CgroupLimits, name: str, placement: Placement, controllers: tuple[str, ...]) -> None:
        self.limits = limits
        self.name = name
        self.placement = placement
        self.controllers = controllers
        self.path: str | None = None
        self._peak_fd: int | None = None
        self._counters = Counters()

    def create(self) -> None:
        own = self.placement.own_dir
        sweep_stale(own)
        enable = " ".join(f"+{c}" for c in self.controllers)
        try:
            _enable_in_own(own, enable)
            self.path = make_sandbox_dir(own, self.name)
            write_text(os.path.join(own, NSBOX_DIR, "cgroup.subtree_control"), enable)
            self._set_limits()
        except BaseException:
            self.remove()
            raise

    def _file(self, name: str) -> str:
        if self.path is None:
            raise OSError(2, "the cgroup was not created")
        return os.path.join(self.path, name)

    def _set_limits(self) -> None:
        if "memory" in self.controllers:
            write_text(self._file("memory.max"), str(self.limits.memory))
            if os.path.exists(self._file("memory.swap.max")):
                write_text(self._file("memory.swap.max"), "0")
        if "pids" in self.controllers:
            write_text(self._file("pids.max"), str(self.limits.pids))
        if "cpu" in self.controllers:
            quota = cpu_quota_us(self.limits.cpus)
            write_text(self._file("cpu.max"), f"{quota} {CPU_PERIOD_US}")

    def attach(self, pid: int) -> None:
        write_text(self._file("cgroup.procs"), str(pid))

    def usage(self) -> Usage:
        """Read twice per run: straight from the files, kept open (``Counters``)."""
        read = self._counters.read
        cpu_ns = keyed(read(self._file("cpu.stat")), "usage_usec") * 1000
        peak = oom = pids = 0
        has_peak = False
        if "memory" in self.controllers:
            peak, has_peak = self._read_peak()
            oom = keyed(read(self._file("memory.events")), "oom_kill")
        if "pids" in self.controllers:
            pids = keyed(read(self._file("pids.events")), "max")
        return Usage(cpu_ns, peak if has_peak else None, oom, pids)

    def _read_peak(self) -> tuple[int, bool]:
        if self._peak_fd is not None:
            return int(os.pread(self._peak_fd, 64, 0) or b"0"), True
        try:
            return int(read_text(self._file("memory.peak"))), True
        except (OSError, ValueError):
            return 0, False  # memory.peak is Linux 5.19+

    def reset_peak(self) -> None:
        if "memory" not in self.controllers:
            return
        self._close_peak()
        try:
            fd = os.open(self._file("memory.peak"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.write(fd, b"reset\n")
        except OSError:  # before Linux 6.12 memory.peak cannot be reset
            os.close(fd)
            return
        self._peak_fd = fd

    def limit_memory(self, extra: int | None) -> None:
        if "memory" not in self.controllers:
            return
        limit = self.limits.memory
        if extra is not None:
            limit = min(limit, int(read_text(self._file("memory.current"))) + extra)
        write_text(self._file("memory.max"), str(limit))

    def _close_peak(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None

    def kill(self) -> None:
        if self.path is None:
            return
        try:
            write_text(self._file("cgroup.kill"), "1")  # Linux 5.14+
        except OSError:
            kill_procs(self.path)

    def remove(self) -> None:
        self._close_peak()
        self._counters.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                remove_dir(self.path)
            self.path = None


def _enable_in_own(own: str, enable: str) -> None:
    control = os.path.join(own, "cgroup.subtree_control")
    try:
        write_text(control, enable)
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY or not _delegated_to_us(own):
            raise OSError(exc.errno, exc.strerror, control) from exc
    _move_processes_down(own)
    write_text(control, enable)


def _delegated_to_us(path: str) -> bool:
    """Ours to split: owned by our (non-root) uid, or marked delegated by systemd."""
    if os.stat(path).st_uid == os.geteuid() != 0:
        return True
    for name in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name) == b"1":
                return True
    return False


def _move_processes_down(own: str) -> None:
    """Every process of ``own`` into own/nsbox-caller; again while new ones appear."""
    leaf = os.path.join(own, CALLER_LEAF)
    with contextlib.suppress(FileExistsError):
        os.mkdir(leaf, 0o755)
    for _ in range(100):
        pids = read_text(os.path.join(own, "cgroup.procs")).split()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                write_text(os.path.join(leaf, "cgroup.procs"), pid)
    raise OSError(errno.EBUSY, "processes keep appearing in our cgroup", own)
