"""User namespaces: which host ids the sandbox's ids are.

Two nested user namespaces (the kernel facts behind this are in user_namespaces(7)):

* **outer** (A): created by the intermediate. Its id maps are written by the supervisor
  from outside (authority stays outside). As root, inside ids 0..65535 map to an
  unprivileged host range of the sandbox's own, one of ``RANGE_SLOTS`` ranges above
  ``HOST_ID_BASE`` (host uid 0 is never mapped): two sandboxes never share a host uid,
  so they share no per-user kernel quota and cannot touch each other's files.
  Rootless, the user's own uid is the only id (subordinate ranges come later).
  Init builds the mount tree while it holds capabilities here.
* **nested** (B): entered by init once the tree is built. Mounts copied into a mount
  namespace owned by a less privileged user namespace are locked (MNT_LOCKED and the
  locked ro/nosuid/nodev flags, mount_namespaces(7)), so not even root of B can remount
  anything read-write or reveal what a mount covers. ``user.max_user_namespaces`` is 1
  in A before B is created, so B counts as A's one namespace and nothing inside can
  create another (the limit is checked up the chain; bubblewrap's --disable-userns).
  B's maps are written by the intermediate, which holds CAP_SETUID in A.

The ``*_from_parent`` functions run in the process that writes maps; ``*_in_child`` in
the process being mapped.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import prctl

from . import _linux
from ._spec import PAYLOAD_GID, PAYLOAD_UID

#: First host id of the sandbox range when nsbox runs as root: far above login users,
#: systemd's dynamic users and the usual /etc/subuid ranges (100000 + n*65536).
HOST_ID_BASE = 1_000_000_000
ID_RANGE = 65536
#: How many sandboxes can run at once as root (the last range ends below 2**31).
RANGE_SLOTS = 4096


@dataclass(frozen=True)
class IdMapping:
    """Both levels of maps, and who init and the payload are at each level."""

    outer_uid_map: str
    outer_gid_map: str
    nested_uid_map: str
    nested_gid_map: str
    init_nested_uid: int | None  # None: init keeps the id it has (rootless)
    payload_outer_uid: int  # owner of /workspace, which is mounted in A
    payload_outer_gid: int

    @property
    def privileged(self) -> bool:
        """Root mode: the supervisor maps a range and opens the bind sources itself."""
        return self.init_nested_uid is not None

    @property
    def host_uid_range(self) -> range:
        _, host, count = (int(x) for x in self.outer_uid_map.split()[:3])
        return range(host, host + count)

    @property
    def payload_host_ids(self) -> tuple[int, int]:
        """The payload's uid and gid as the host sees them (who owns what it writes)."""
        uid = _to_host(self.outer_uid_map, self.payload_outer_uid)
        return uid, _to_host(self.outer_gid_map, self.payload_outer_gid)


def _to_host(id_map: str, inside: int) -> int:
    for line in id_map.splitlines():
        first, host, count = (int(x) for x in line.split())
        if first <= inside < first + count:
            return host + inside - first
    raise ValueError(f"id {inside} is not mapped")


def allocate_host_range() -> tuple[int, socket.socket]:
    """As root: the first host id of a range no other running sandbox has, and the socket
    that holds it. The hold is a bound abstract unix socket: the kernel releases it when
    the supervisor exits, however it exits, and it leaves no file behind."""
    first = os.getpid() % RANGE_SLOTS
    for i in range(RANGE_SLOTS):
        slot = (first + i) % RANGE_SLOTS
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(f"\0nsbox-id-range-{slot}")
        except OSError:
            sock.close()
            continue
        return HOST_ID_BASE + slot * ID_RANGE, sock
    raise OSError(16, f"all {RANGE_SLOTS} host id ranges are in use")


def mapping_for_host(host_base: int = HOST_ID_BASE) -> IdMapping:
    """The factory: an unprivileged host range as root, the user's own id otherwise."""
    if os.geteuid() == 0:
        outer_uid = f"0 {host_base} {ID_RANGE}\n"
        identity = f"0 0 {ID_RANGE}\n"
        return IdMapping(outer_uid, outer_uid, identity, identity, 0, PAYLOAD_UID, PAYLOAD_GID)
    # Rootless: A knows one id (0 = the user); in B that id becomes the payload's.
    return IdMapping(
        f"0 {os.geteuid()} 1\n",
        f"0 {os.getegid()} 1\n",
        f"{PAYLOAD_UID} 0 1\n",
        f"{PAYLOAD_GID} 0 1\n",
        None,
        0,
        0,
    )


def prepare_in_child() -> None:
    """Before unshare: drop supplementary groups, which would stay host groups inside."""
    if os.geteuid() == 0:
        os.setgroups([])


def write_maps_from_parent(proc_dir_fd: int, uid_map: str, gid_map: str) -> None:
    """Write setgroups=deny and the maps of the process whose /proc dir is ``proc_dir_fd``.

    setgroups is denied so that nothing inside can drop a group to get past a
    negative group permission (CVE-2014-8989). os.open/os.write and a length check,
    because a buffered file's implicit close can swallow the error.
    """
    for name, text in (("setgroups", "deny"), ("uid_map", uid_map), ("gid_map", gid_map)):
        data = text.encode()
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_dir_fd)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(5, f"short write to {name}")
        finally:
            os.close(fd)


def write_proc_file(pid: int, name: str, text: str) -> None:
    """/proc/<pid>/<name> (0: ourselves), written with os.write and checked."""
    fd = os.open(f"/proc/{pid or 'self'}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.write(fd, text.encode()) != len(text):
            raise OSError(5, f"short write to /proc/{pid or 'self'}/{name}")
    finally:
        os.close(fd)


def become_root_in_child() -> None:
    """In A after the maps: become A's root (host HOST_ID_BASE, or the user)."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def limit_nesting_in_child(proc: str = "/proc") -> None:
    """One user namespace may be created below A: the nested one, by init."""
    fd = os.open(f"{proc}/sys/user/max_user_namespaces", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


def enter_nested_in_child(mapping: IdMapping, request_fd: int, reply_fd: int) -> None:
    """unshare(user+mount) into B and have the intermediate write B's maps.

    Dumpable for the moment of the write: the uid change that made us A's root also
    made us non-dumpable, and /proc/<pid> of a non-dumpable process belongs to host
    root, where the intermediate cannot write (proc(5), "dumpable").
    """
    prctl.set_dumpable(True)
    _linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS)
    os.write(request_fd, b"m")
    if os.read(reply_fd, 1) != b"k":
        raise OSError(71, "the intermediate did not write the nested id maps")
    prctl.set_dumpable(False)
    if mapping.init_nested_uid is not None:
        os.setresgid(mapping.init_nested_uid, mapping.init_nested_uid, mapping.init_nested_uid)
        os.setresuid(mapping.init_nested_uid, mapping.init_nested_uid, mapping.init_nested_uid)


def serve_nested_maps_from_parent(mapping: IdMapping, proc_dir_fd: int, request_fd: int, reply_fd: int) -> None:
    """In the intermediate: wait for init's request, write B's maps, reply."""
    if os.read(request_fd, 1) != b"m":
        raise OSError(71, "init ended before asking for its nested id maps")
    write_maps_from_parent(proc_dir_fd, mapping.nested_uid_map, mapping.nested_gid_map)
    os.write(reply_fd, b"k")


def become_payload_in_child() -> None:
    """In B: the payload's unprivileged ids. Leaving uid 0 clears permitted and
    effective capabilities (capabilities(7), "Effect of user ID changes")."""
    os.setresgid(PAYLOAD_GID, PAYLOAD_GID, PAYLOAD_GID)
    os.setresuid(PAYLOAD_UID, PAYLOAD_UID, PAYLOAD_UID)
