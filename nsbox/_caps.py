"""Capabilities: the payload keeps none (capabilities(7)).

The bounding set is emptied while we still hold CAP_SETPCAP, ambient and inheritable
are cleared, and the uid change that follows clears permitted and effective; what is
left is then checked in /proc, and any remaining bit aborts the run (fail closed).
python-prctl knows the capabilities it was built with; the kernel's own count
(/proc/sys/kernel/cap_last_cap) is what we iterate, so a newer kernel's extra
capabilities are dropped too.
"""

from __future__ import annotations

import _prctl
import prctl

from . import _linux

_CAP_FIELDS = (b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:")


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def drop_bounding_in_child(last: int) -> None:
    """Empty the bounding set (needs CAP_SETPCAP, so before the uid change)."""
    for cap in range(last + 1):
        _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    _linux.clear_ambient_caps()
    prctl.cap_inheritable.limit()


def clear_sets_in_child() -> None:
    """Clear permitted and effective explicitly (a no-op after leaving uid 0; needed
    when the payload's uid was already the namespace creator's, rootless)."""
    prctl.cap_effective.limit()
    prctl.cap_permitted.limit()


#: What the supervisor keeps of the capabilities joining A gave it (subordinate mode): to end
#: the sandbox's processes at close, and to act on the workspace as the payload (setfsuid).
SUPERVISOR = (prctl.CAP_KILL, prctl.CAP_SETUID, prctl.CAP_SETGID)


def keep_supervisors_from_parent() -> None:
    """Subordinate mode, in the supervisor once it has joined A and dropped its groups: no
    capability in A past ``SUPERVISOR``. The workspace file API then acts with the payload's
    rights and no more: setfsuid drops the file capabilities only when it changes the id,
    and with a writable bind the supervisor's uid in A is the payload's own already."""
    prctl.cap_effective.limit(*SUPERVISOR)
    prctl.cap_permitted.limit(*SUPERVISOR)


#: What run_code's warm interpreter keeps (as uid 0 of the nested namespace, nothing else):
#: enough to make a forked child the program uid and drop them for good (``_guest/warm.py``).
WARM = (prctl.CAP_SETGID, prctl.CAP_SETUID, prctl.CAP_SETPCAP)


def keep_only_in_child(last: int, keep: tuple[int, ...] = WARM) -> None:
    """Every set down to ``keep`` (bounding, permitted, effective; ambient and inheritable
    empty), then checked in /proc like ``assert_none_in_child``. An execve as uid 0 with
    no_new_privs keeps exactly these (permitted cannot grow past what it was)."""
    for cap in range(last + 1):
        if cap not in keep:
            _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    _linux.clear_ambient_caps()
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit(*keep)
    prctl.cap_permitted.limit(*keep)
    mask = sum(1 << cap for cap in keep)
    expected = {b"CapInh:": 0, b"CapPrm:": mask, b"CapEff:": mask, b"CapBnd:": mask, b"CapAmb:": 0}
    for line in _status_lines():
        field = line.split()[0] if line.strip() else b""
        if field in expected and int(line.split()[1], 16) != expected[field]:
            raise PermissionError(1, f"capabilities other than the warm interpreter's: {line.decode()}")


def _status_lines() -> list[bytes]:
    with open("/proc/thread-self/status", "rb") as f:
        return f.read().splitlines()


def assert_none_in_child() -> None:
    for line in _status_lines():
        if line.startswith(_CAP_FIELDS) and int(line.split()[1], 16) != 0:
            raise PermissionError(1, f"capabilities remain: {line.decode()}")
