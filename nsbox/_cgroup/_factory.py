"""The one place that decides which cgroup flavour a sandbox gets."""

from __future__ import annotations

import os

from .._errors import SetupError
from ._base import NSBOX_DIR, Cgroup, CgroupLimits, CgroupSet, NullCgroup, sandbox_name, sweep_stale
from ._layout import CONTROLLERS, Placement, cgroup_layout
from ._v1 import CgroupV1
from ._v2 import CgroupV2

_serial = 0

#: What to do where a controller is not enabled for our cgroup (systemd's user@.service
#: delegates only some by default: cpu is often the missing one).
MISSING_CONTROLLER_REMEDY = (
    "enable the controller(s) for nsbox's cgroup (cgroup v2: echo '+memory +pids +cpu' > "
    "<parent>/cgroup.subtree_control; systemd: Delegate=yes, and for users `systemctl edit user@.service` "
    "with [Service] Delegate=memory pids cpu), or run with --no-cgroups to rely on rlimits only"
)

#: What to do where our cgroup is not ours to write (``nsbox check`` says it too).
DELEGATION_REMEDY = (
    "start nsbox in a cgroup delegated to you: systemd-run --user --scope -p Delegate=yes nsbox ... "
    "(for a service: Delegate=yes in its unit; without a systemd user session: loginctl enable-linger $USER, "
    "or ask root to chown a cgroup to you); or run with --no-cgroups (limits by rlimits only)"
    if os.geteuid() != 0
    else "run nsbox in a cgroup of its own (systemd: Delegate=yes), or with --no-cgroups (rlimits only)"
)


def cgroup_for_host(limits: CgroupLimits | None) -> Cgroup:
    """``None`` means the operator disabled cgroups: NullCgroup. Otherwise every controller
    must be usable from here, or this refuses with a remedy (never a silent fallback)."""
    if limits is None:
        return NullCgroup()
    global _serial
    _serial += 1
    name = sandbox_name(_serial)
    layout = cgroup_layout()
    missing = [c for c in CONTROLLERS if c not in layout]
    if "cpu" in layout and layout["cpu"].version == "v1" and "cpuacct" not in layout:
        missing.append("cpuacct")
    if missing:
        raise SetupError(
            "find cgroup controllers",
            detail=f"no usable {', '.join(missing)} controller from our cgroup",
            remedy=MISSING_CONTROLLER_REMEDY,
        )
    ours = {p.own_dir for c, p in layout.items() if c in (*CONTROLLERS, "cpuacct")}
    unwritable = sorted(ours - writable_cgroups(layout))
    if unwritable:
        raise SetupError(
            "find cgroup controllers",
            detail=f"our cgroup(s) {', '.join(unwritable)} are not writable by us (not delegated)",
            remedy=DELEGATION_REMEDY,
        )
    v1 = {c: layout[c] for c in (*CONTROLLERS, "cpuacct") if c in layout and layout[c].version == "v1"}
    if "cpu" not in v1:
        v1.pop("cpuacct", None)
    v2 = tuple(c for c in CONTROLLERS if layout[c].version == "v2")
    parts: list[Cgroup] = []
    if v1:
        parts.append(CgroupV1(limits, name, v1))
    if v2:
        parts.append(CgroupV2(limits, name, layout[v2[0]], v2))
    return parts[0] if len(parts) == 1 else CgroupSet(parts)


def sweep_all() -> bool:
    """Sweep stale sandbox directories in every hierarchy; True if none is left."""
    clean = True
    for placement in cgroup_layout().values():
        sweep_stale(placement.own_dir)
        parent = os.path.join(placement.own_dir, NSBOX_DIR)
        clean = clean and not (os.path.isdir(parent) and any(os.scandir(parent)))
    return clean


def writable_cgroups(layout: dict[str, Placement]) -> set[str]:
    """Our cgroups we may create in and move processes within (the folder and its
    cgroup.procs: what a delegation hands over)."""
    return {
        p.own_dir
        for p in layout.values()
        if os.access(p.own_dir, os.W_OK) and os.access(os.path.join(p.own_dir, "cgroup.procs"), os.W_OK)
    }
