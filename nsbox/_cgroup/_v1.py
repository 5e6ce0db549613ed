"""cgroup v1: one hierarchy per controller (cpu and cpuacct may share one).

Limits through cgroupspy's controllers where it has them (memory, cpu); the counters a
run reads are read directly (``Counters``). Files:
memory.limit_in_bytes and memory.memsw.limit_in_bytes (no swap beyond the limit, where
swap accounting is on), memory.max_usage_in_bytes (reset per run by writing 0),
memory.oom_control's oom_kill; pids.max and pids.events (cgroupspy has no pids
controller); cpu.cfs_period_us and cpu.cfs_quota_us; cpuacct.usage (ns).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from cgroupspy.controllers import CpuController, MemoryController

from ._base import (
    CPU_PERIOD_US,
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
from ._layout import Placement


class _Node:
    """The one attribute cgroupspy's controllers need of a tree node: its path."""

    def __init__(self, path: str) -> None:
        self.full_path = os.fsencode(path)  # cgroupspy joins it with bytes file names


class CgroupV1(Cgroup):
    kind = "cgroup v1"

    def __init__(self, limits: CgroupLimits, name: str, placements: Mapping[str, Placement]) -> None:
        self.limits = limits
        self.name = name
        self.placements = dict(placements)  # controller -> placement; "cpu" brings "cpuacct"
        self.dirs: dict[str, str] = {}
        self._counters = Counters()

    def create(self) -> None:
        try:
            for controller, placement in self.placements.items():
                sweep_stale(placement.own_dir)
                shared = next((d for c, d in self.dirs.items() if self.placements[c].mount == placement.mount), None)
                self.dirs[controller] = shared or make_sandbox_dir(placement.own_dir, self.name)
            self._set_limits()
        except BaseException:
            self.remove()
            raise

    def _set_limits(self) -> None:
        if "memory" in self.dirs:
            memory = MemoryController(_Node(self.dirs["memory"]))
            memory.limit_in_bytes = self.limits.memory
            if os.path.exists(os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes")):
                memory.memsw_limit_in_bytes = self.limits.memory  # memory + swap: no swap
        if "pids" in self.dirs:
            write_text(os.path.join(self.dirs["pids"], "pids.max"), str(self.limits.pids))
        if "cpu" in self.dirs:
            cpu = CpuController(_Node(self.dirs["cpu"]))
            cpu.cfs_period_us = CPU_PERIOD_US
            cpu.cfs_quota_us = cpu_quota_us(self.limits.cpus)

    def attach(self, pid: int) -> None:
        for path in dict.fromkeys(self.dirs.values()):
            write_text(os.path.join(path, "cgroup.procs"), str(pid))

    def usage(self) -> Usage:
        """Read twice per run: straight from the files, kept open (``Counters``)."""
        cpu_ns = peak = oom = pids = 0
        has_peak = False
        read = self._counters.read
        if "cpuacct" in self.dirs:
            cpu_ns = int(read(os.path.join(self.dirs["cpuacct"], "cpuacct.usage")))
        if "memory" in self.dirs:
            peak, has_peak = int(read(os.path.join(self.dirs["memory"], "memory.max_usage_in_bytes"))), True
            oom = keyed(read(os.path.join(self.dirs["memory"], "memory.oom_control")), "oom_kill")
        if "pids" in self.dirs:
            pids = keyed(read(os.path.join(self.dirs["pids"], "pids.events")), "max")
        return Usage(cpu_ns, peak if has_peak else None, oom, pids)

    def reset_peak(self) -> None:
        if "memory" in self.dirs:
            MemoryController(_Node(self.dirs["memory"])).max_usage_in_bytes = 0

    def limit_memory(self, extra: int | None) -> None:
        if "memory" not in self.dirs:
            return
        directory = self.dirs["memory"]
        limit = self.limits.memory
        if extra is not None:
            limit = min(limit, int(read_text(os.path.join(directory, "memory.usage_in_bytes"))) + extra)
        # memory + swap may never be below memory alone: lowered after it, raised before it
        memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
        files = [os.path.join(directory, "memory.limit_in_bytes")]
        if os.path.exists(memsw):
            files = [*files, memsw] if extra is not None else [memsw, *files]
        for path in files:
            write_text(path, str(limit))

    def kill(self) -> None:
        for path in dict.fromkeys(self.dirs.values()):
            kill_procs(path)

    def remove(self) -> None:
        self._counters.close()
        for path in dict.fromkeys(self.dirs.values()):
            with contextlib.suppress(OSError):
                remove_dir(path)
        self.dirs = {}
