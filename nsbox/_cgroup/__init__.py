"""Cgroups: one sandbox's limits in, its usage out, on cgroup v1, v2 or a mix of both.

``cgroup_for_host(limits, name)`` is the one factory. It picks v1 or v2 per controller
(memory, pids, cpu), by where each is enabled for us (a hybrid host such as Debian with
systemd's hybrid layout has some on each), and returns one ``Cgroup``: a ``CgroupV2``, a
``CgroupV1``, a ``CgroupSet`` of both, or, only when the operator explicitly disabled
cgroups, a ``NullCgroup``. If a controller cannot be used, it refuses (SetupError with a
remedy); it never falls back silently.

Where: below our own cgroup in each hierarchy (read from /proc/self/cgroup), in one
``nsbox`` directory, one directory per sandbox named after its supervisor's pid and start
time. A sandbox's directories are removed when it is closed. If its supervisor is killed
(SIGKILL), they are removed by the spawner that forked it (embedded), by a ``CgroupGuard``
(the one-shot CLI), and failing both, swept by the next supervisor that starts.
"""

from __future__ import annotations

from ._base import Cgroup, CgroupLimits, CgroupSet, NullCgroup, Usage
from ._factory import DELEGATION_REMEDY, MISSING_CONTROLLER_REMEDY, cgroup_for_host, sweep_all, writable_cgroups
from ._guard import CgroupGuard
from ._layout import CONTROLLERS, cgroup_layout

__all__ = [
    "CONTROLLERS",
    "DELEGATION_REMEDY",
    "MISSING_CONTROLLER_REMEDY",
    "Cgroup",
    "CgroupGuard",
    "CgroupLimits",
    "CgroupSet",
    "NullCgroup",
    "Usage",
    "cgroup_for_host",
    "cgroup_layout",
    "sweep_all",
    "writable_cgroups",
]
