"""Where each controller's hierarchy is mounted, and our own cgroup in it."""

from __future__ import annotations

import os
from dataclasses import dataclass

CONTROLLERS = ("memory", "pids", "cpu")
#: cgroup v2: where nsbox moves the processes of a delegated cgroup it uses, so that the
#: controllers can be enabled there ("no internal processes", cgroup-v2.rst; systemd's
#: CGROUP_DELEGATION.md asks the same of a delegatee). A process in this leaf counts the
#: cgroup above it as its own: that is where it started.
CALLER_LEAF = "nsbox-caller"


@dataclass(frozen=True)
class Placement:
    """One controller's home: ``version`` v1/v2, the hierarchy's mount, our cgroup in it."""

    version: str
    mount: str
    own: str

    @property
    def own_dir(self) -> str:
        return os.path.join(self.mount, self.own.lstrip("/"))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def cgroup_layout() -> dict[str, Placement]:
    """For each controller we could use: its placement. v1 wins where a controller is
    attached to a v1 hierarchy (it then cannot be enabled in v2 at the same time)."""
    own: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path
    layout: dict[str, Placement] = {}
    v2_mount = None
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) < 3 or len(fields) < 5:
            continue
        fstype, mountpoint, options = rfields[0], fields[4], rfields[2].split(",")
        if fstype == "cgroup":
            for name in (*CONTROLLERS, "cpuacct"):
                if name in options and name in own:
                    layout[name] = Placement("v1", mountpoint, own[name])
        elif fstype == "cgroup2" and "" in own and v2_mount is None:
            v2_mount = mountpoint
    if v2_mount is not None:
        path = own[""]
        if os.path.basename(path) == CALLER_LEAF:
            path = os.path.dirname(path)
        placement = Placement("v2", v2_mount, path)
        enabled = _read(os.path.join(placement.own_dir, "cgroup.controllers")).split()
        for name in CONTROLLERS:
            if name in enabled and name not in layout:
                layout[name] = placement
    return layout
