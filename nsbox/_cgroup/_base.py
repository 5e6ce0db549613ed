"""The interface every cgroup flavour implements, the composite, and the null object."""

from __future__ import annotations

import contextlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .._errors import SpecError

NSBOX_DIR = "nsbox"


@dataclass(frozen=True)
class Usage:
    """Counters of a sandbox's cgroup; a run's usage is the difference of two readings
    (the peak is reset before each run where the kernel allows)."""

    cpu_ns: int = 0
    memory_peak: int | None = None
    oom_kills: int = 0
    pids_max_hits: int = 0

    def since(self, before: Usage) -> Usage:
        return Usage(
            self.cpu_ns - before.cpu_ns,
            self.memory_peak,
            self.oom_kills - before.oom_kills,
            self.pids_max_hits - before.pids_max_hits,
        )


@dataclass(frozen=True)
class CgroupLimits:
    """What the cgroup enforces, in the kernel's units (``pids`` is pids.max: the user's
    limit plus nsbox's own processes in the cgroup, see ``SandboxPlan.own_processes``)."""

    memory: int
    cpus: float
    pids: int


class Cgroup(ABC):
    """One sandbox's cgroup(s). ``create`` makes and limits them; the supervisor
    ``attach``es the intermediate before it unshares its cgroup namespace."""

    #: For reports: "cgroup v1", "cgroup v2", "cgroup v1+v2" or "rlimit-only".
    kind: str = ""

    @abstractmethod
    def create(self) -> None: ...

    @abstractmethod
    def attach(self, pid: int) -> None: ...

    @abstractmethod
    def usage(self) -> Usage: ...

    @abstractmethod
    def reset_peak(self) -> None: ...

    @abstractmethod
    def limit_memory(self, extra: int | None) -> None:
        """Memory limited to what is in use now plus ``extra`` bytes (never above the
        sandbox's limit), for one of run_code's programs; None: the sandbox's limit again."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup (a safety net: the pid namespace's end
        takes them all anyway)."""

    @abstractmethod
    def remove(self) -> None: ...


class NullCgroup(Cgroup):
    """Used only when the operator disabled cgroups (--no-cgroups): rlimits are all."""

    kind = "rlimit-only"

    def create(self) -> None:
        pass

    def attach(self, pid: int) -> None:
        pass

    def usage(self) -> Usage:
        return Usage()

    def reset_peak(self) -> None:
        pass

    def limit_memory(self, extra: int | None) -> None:
        if extra is not None:
            raise SpecError("memory", "a program's own memory limit needs cgroups (they are off)")

    def kill(self) -> None:
        pass

    def remove(self) -> None:
        pass


class CgroupSet(Cgroup):
    """Controllers split across v1 and v2 (a hybrid host): every call goes to each part."""

    def __init__(self, parts: list[Cgroup]) -> None:
        self.parts = parts
        self.kind = "cgroup v1+v2"

    def create(self) -> None:
        for part in self.parts:
            part.create()

    def attach(self, pid: int) -> None:
        for part in self.parts:
            part.attach(pid)

    def usage(self) -> Usage:
        readings = [part.usage() for part in self.parts]
        peaks = [u.memory_peak for u in readings if u.memory_peak is not None]
        return Usage(
            sum(u.cpu_ns for u in readings),
            max(peaks) if peaks else None,
            sum(u.oom_kills for u in readings),
            sum(u.pids_max_hits for u in readings),
        )

    def reset_peak(self) -> None:
        for part in self.parts:
            part.reset_peak()

    def limit_memory(self, extra: int | None) -> None:
        for part in self.parts:
            part.limit_memory(extra)

    def kill(self) -> None:
        for part in self.parts:
            part.kill()

    def remove(self) -> None:
        for part in self.parts:
            part.remove()


# --- helpers shared by the v1 and v2 flavours ----------------------------------------------
def sandbox_name(serial: int) -> str:
    """<pid>-<start time>-<serial>: unique while the supervisor lives, and recognisably
    stale once it has died (even if its pid is reused)."""
    return f"{os.getpid()}-{_start_time(os.getpid())}-{serial}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rindex(b")") + 2 :].split()[22 - 3].decode()


def owner_alive(name: str) -> bool:
    pid, _, rest = name.partition("-")
    start = rest.partition("-")[0]
    return pid.isdigit() and _start_time(int(pid)) == start


def read_text(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def write_text(path: str, value: str) -> None:
    """os.open/os.write: a buffered file's implicit close could swallow the error."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Counters:
    """The counter files a run reads twice (before and after), each opened once and read
    with pread: a run pays a read per file, not an open, a read and a close."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, 4096, 0).decode("ascii")

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def keyed(text: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed file (memory.events, pids.events, cpu.stat)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


#: The CPU bandwidth period, both versions (v1 cpu.cfs_period_us, v2 cpu.max's second field).
CPU_PERIOD_US = 100_000


def cpu_quota_us(cpus: float) -> int:
    """Microseconds of CPU per period for ``cpus`` CPUs; 1 ms is the kernel's smallest quota."""
    return max(1000, round(cpus * CPU_PERIOD_US))


def make_sandbox_dir(own_dir: str, name: str) -> str:
    """<own>/nsbox/<name>; retried, as a concurrent sweep may remove an empty nsbox/."""
    for _ in range(5):
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(own_dir, NSBOX_DIR), 0o755)
        path = os.path.join(own_dir, NSBOX_DIR, name)
        try:
            os.mkdir(path, 0o755)
            return path
        except FileNotFoundError:
            continue
    raise OSError(2, f"could not create {own_dir}/{NSBOX_DIR}/{name}")


def kill_procs(path: str) -> None:
    """SIGKILL the processes listed in path/cgroup.procs until none is left (bounded)."""
    for _ in range(50):
        try:
            pids = [int(p) for p in read_text(os.path.join(path, "cgroup.procs")).split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        time.sleep(0.01)


def remove_dir(path: str, parent_too: bool = True) -> None:
    """rmdir the sandbox's directory (retrying while its last tasks exit), then the
    shared nsbox/ directory if no other sandbox uses it."""
    for _ in range(100):
        try:
            os.rmdir(path)
            break
        except FileNotFoundError:
            break
        except OSError:
            time.sleep(0.01)
    if parent_too:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def sweep_stale(own_dir: str) -> None:
    """Remove the directories of sandboxes whose supervisor is gone (it was SIGKILLed).
    Only empty ones: their processes died with the supervisor (parent-death signals), and
    a supervisor we cannot see (another pid namespace) must not lose its sandbox."""
    parent = os.path.join(own_dir, NSBOX_DIR)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not owner_alive(name):
            with contextlib.suppress(OSError):
                os.rmdir(path)
