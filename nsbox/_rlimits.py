"""Resource limits of each payload process (setrlimit(2)), as a table.

Cgroups bound the sandbox as a whole; these bound each process, and with --no-cgroups
they are all there is (then memory becomes RLIMIT_AS and pids RLIMIT_NPROC). A limit
is never raised above the current hard limit: that would need a capability we drop.
"""

from __future__ import annotations

import math
import resource

from ._spec import Limits

#: (resource, how its value comes from the limits, applies with cgroups too?)
_TABLE: tuple[tuple[int, str, bool], ...] = (
    (resource.RLIMIT_CORE, "core dumps off", True),
    (resource.RLIMIT_FSIZE, "file_size", True),
    (resource.RLIMIT_NOFILE, "open_files", True),
    (resource.RLIMIT_CPU, "cpu_time", True),
    (resource.RLIMIT_AS, "memory", False),
    (resource.RLIMIT_NPROC, "pids", False),
)


def plan(limits: Limits, privileged: bool) -> tuple[tuple[int, int], ...]:
    """(resource, value) pairs for the payload, computed once per sandbox.

    RLIMIT_NPROC counts every process of the payload's uid: a sandbox's own uid as root,
    but the user's own uid rootless, where it would count their other processes too."""
    values: list[tuple[int, int]] = []
    for res, source, with_cgroups in _TABLE:
        if not (with_cgroups or not limits.cgroups):
            continue
        if res == resource.RLIMIT_NPROC and not privileged:
            continue
        if source == "core dumps off":
            value = 0
        elif source == "cpu_time":
            if limits.cpu_time is None:
                continue
            # A backstop per process: the supervisor enforces cpu_time over the whole
            # sandbox (its cgroup) and reports it; the kernel's SIGKILL comes a second later.
            value = math.ceil(limits.cpu_time) + 1
        elif source == "pids":
            value = limits.pids  # init and the intermediate run as another uid (no launcher: see below)
        else:
            value = int(getattr(limits, source))
        values.append((res, value))
    return tuple(values)


#: Limits that would bind the launcher itself, not only each payload: its own CPU time adds
#: up over every run, its address space is a Python process's, and it is one more process
#: of the payload's uid. With any of them, init forks each payload instead (_launcher).
_PAYLOAD_ONLY = (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC)


def binds_payload_only(values: tuple[tuple[int, int], ...]) -> bool:
    return any(res in _PAYLOAD_ONLY for res, _ in values)


def apply_in_child(values: tuple[tuple[int, int], ...]) -> None:
    for res, value in values:
        _, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))
