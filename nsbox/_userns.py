"""User namespaces: which host ids the sandbox's ids are.

Two nested user namespaces (the kernel facts behind this are in user_namespaces(7)):

* **outer** (A): created by the intermediate. Its id maps are written by the supervisor
  from outside (authority stays outside). As root, inside ids 0..65535 map to an
  unprivileged host range of the sandbox's own, one of ``RANGE_SLOTS`` ranges above
  ``HOST_ID_BASE`` (host uid 0 is never mapped): two sandboxes never share a host uid,
  so they share no per-user kernel quota and cannot touch each other's files.
  Rootless with a subordinate range of the user's (/etc/subuid, /etc/subgid), A's 0 is the
  user and 1.. are that range, written by the setuid helpers newuidmap/newgidmap (the only
  way an ordinary user may map ids other than their own): the payload then runs as a uid
  of the range, not as the user, so it owns none of the user's files and cannot signal
  init. All sandboxes of one user share that range. A sandbox with a writable bind is the
  exception (podman's ``--userns=keep-id``): its payload's ids are the user's own and A's
  root is a subordinate id, so that what it writes into the bind is the user's and it can
  write where the user can; it still cannot signal init, and of the user's files it reaches
  only what is bound (as root, an idmapped mount does this instead: ``idmap_namespace``).
  Without a range, the user's own id is the only id ("own" mode): the payload shares
  init's uid, and the report of ``nsbox check`` says so. Init builds the mount tree while
  it holds capabilities here.
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

import errno
import os
import shutil
import socket
import subprocess  # nosec B404  # runs newuidmap/newgidmap: fixed argv, no shell
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
    """Both levels of maps, and who init and the payload are at each level. ``mode``:
    "root" (a range of the sandbox's own), "subordinate" (the user and their /etc/subuid
    range, through newuidmap) or "own" (the user's own id only)."""

    mode: str
    outer_uid_map: str
    outer_gid_map: str
    nested_uid_map: str
    nested_gid_map: str
    init_nested_uid: int | None  # None: init keeps the id it has ("own" mode)
    payload_outer_uid: int  # owner of /workspace, which is mounted in A
    payload_outer_gid: int
    #: subordinate mode with a writable bind (keep-id): the payload is the user, and A's root
    #: (the intermediate and init) a subordinate id
    caller_payload: bool = False

    @property
    def privileged(self) -> bool:
        """Root mode: the supervisor maps a range and opens the bind sources itself."""
        return self.mode == "root"

    @property
    def file_api_ids(self) -> tuple[int, int]:
        """The ids the workspace file API acts as (setfsuid), in the user namespace the
        supervisor is in by then: the payload's host ids, or in subordinate mode, where the
        supervisor joins A (``join_from_parent``), the payload's ids in A."""
        if self.mode == "subordinate":
            return self.payload_outer_uid, self.payload_outer_gid
        return self.payload_host_ids

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


def mapping_for_host(host_base: int = HOST_ID_BASE, caller_payload: bool = False) -> IdMapping:
    """The factory: an unprivileged host range as root; rootless, the user and their
    subordinate range where the host has one (and newuidmap), else the user's own id.
    ``caller_payload`` (rootless, a sandbox with a writable bind): in subordinate mode the
    payload's ids are the user's own and A's root a subordinate id instead (podman's
    ``--userns=keep-id``), so that what the payload writes into a bind is the user's."""
    identity = f"0 0 {ID_RANGE}\n"
    if os.geteuid() == 0:
        outer_uid = f"0 {host_base} {ID_RANGE}\n"
        return IdMapping("root", outer_uid, outer_uid, identity, identity, 0, PAYLOAD_UID, PAYLOAD_GID)
    uid, gid = os.geteuid(), os.getegid()
    ranges = subordinate_ranges()
    if ranges is not None:
        (first_uid, uids), (first_gid, gids) = ranges
        outer_uid, nested_uid = _subordinate_maps(uid, first_uid, uids, PAYLOAD_UID if caller_payload else 0)
        outer_gid, nested_gid = _subordinate_maps(gid, first_gid, gids, PAYLOAD_GID if caller_payload else 0)
        return IdMapping(
            "subordinate", outer_uid, outer_gid, nested_uid, nested_gid, 0, PAYLOAD_UID, PAYLOAD_GID, caller_payload
        )
    # Own: A knows one id (0 = the user); in B that id becomes the payload's.
    return IdMapping("own", f"0 {uid} 1\n", f"0 {gid} 1\n", f"{PAYLOAD_UID} 0 1\n", f"{PAYLOAD_GID} 0 1\n", None, 0, 0)


def _subordinate_maps(own: int, first: int, count: int, at: int) -> tuple[str, str]:
    """A's map and B's (for uids or gids) in subordinate mode: A's ids 0..count are the
    user's own id, at A's ``at``, and the ``count`` subordinate ids ``first``.. in order
    around it. B is the identity on A, extent by extent: a range of B must lie within one
    extent of A (map_id_range_down in kernel/user_namespace.c), else EPERM."""
    extents = [(0, first, at), (at, own, 1), (at + 1, first + at, count - at)]
    outer = "".join(f"{inside} {host} {n}\n" for inside, host, n in extents if n > 0)
    nested = "".join(f"{inside} {inside} {n}\n" for inside, _, n in extents if n > 0)
    return outer, nested


def _user_names() -> tuple[str, ...]:
    """How /etc/subuid may name us: by login name or by uid (subuid(5))."""
    import pwd  # rootless only

    try:
        return (pwd.getpwuid(os.geteuid()).pw_name, str(os.geteuid()))
    except KeyError:  # a uid without a passwd entry
        return (str(os.geteuid()),)


def _first_range(path: str, names: tuple[str, ...]) -> tuple[int, int] | None:
    """The first range of ``path`` owned by one of ``names`` that holds the payload's id,
    as (first id, count), the count capped at ID_RANGE - 1 (A's 1..65535)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in names or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        first, count = int(parts[1]), int(parts[2])
        if count >= max(PAYLOAD_UID, PAYLOAD_GID):  # A's 1..count must hold the payload's 1000
            return first, min(count, ID_RANGE - 1)
    return None


def subordinate_ranges() -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(uid range, gid range) of ours in /etc/subuid and /etc/subgid, if both exist, hold
    the payload's ids, and newuidmap and newgidmap are installed; else None."""
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return None
    names = _user_names()
    uids, gids = _first_range("/etc/subuid", names), _first_range("/etc/subgid", names)
    return (uids, gids) if uids is not None and gids is not None else None


def write_outer_maps_from_parent(pid: int, mapping: IdMapping) -> None:
    """A's maps, of our child ``pid`` (not yet reaped: the pid cannot be reused)."""
    if mapping.mode == "subordinate":
        write_maps_with_helpers(pid, mapping)
        return
    proc_dir = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_maps_from_parent(proc_dir, mapping.outer_uid_map, mapping.outer_gid_map)
    finally:
        os.close(proc_dir)


def write_maps_with_helpers(pid: int, mapping: IdMapping) -> None:
    """Subordinate mode: newgidmap and newuidmap write A's maps of process ``pid``.
    setgroups stays "allow" in A, as
    newgidmap requires for a subordinate range; B, where every payload runs, is "deny"
    (CVE-2014-8989), written by the intermediate, and A's processes are init and the
    intermediate only."""
    for tool, id_map in (("newgidmap", mapping.outer_gid_map), ("newuidmap", mapping.outer_uid_map)):
        path = shutil.which(tool)
        if path is None:
            raise _linux.SyscallError(errno.ENOENT, tool, "not installed (apt-get install uidmap)")
        argv = [path, str(pid), *id_map.split()]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)  # nosec B603  # argv built here
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()[:500] or f"exit code {done.returncode}"
            raise _linux.SyscallError(errno.EPERM, tool, f"{' '.join(argv[1:])}: {message}")


def write_maps_from_parent(proc_dir_fd: int, uid_map: str, gid_map: str) -> None:
    """Write setgroups=deny and the maps of the process whose /proc dir is ``proc_dir_fd``.

    setgroups is denied so that nothing inside can drop a group to get past a
    negative group permission (CVE-2014-8989). os.open/os.write and a length check,
    because a buffered file's implicit close can swallow the error.
    """
    for name, text in (("setgroups", "deny"), ("uid_map", uid_map), ("gid_map", gid_map)):
        data = text.encode()
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_dir_fd)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(5, f"short write to {name}")
            finally:
                os.close(fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, name) from exc


def write_proc_file(pid: int, name: str, text: str) -> None:
    """/proc/<pid>/<name> (0: ourselves), written with os.write and checked."""
    fd = os.open(f"/proc/{pid or 'self'}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.write(fd, text.encode()) != len(text):
            raise OSError(5, f"short write to /proc/{pid or 'self'}/{name}")
    finally:
        os.close(fd)


def become_root_in_child(mapping: IdMapping) -> None:
    """In A after the maps: become A's root (host HOST_ID_BASE, the user, or with a
    writable bind a subordinate id). In subordinate mode also drop the user's supplementary
    groups, which A shows as its gid 0 or, with a writable bind, as the payload's gid (the
    payload would carry the user's groups into the sandbox): A's
    setgroups is "allow" there, as newgidmap wants for a subordinate range. In own mode
    setgroups is "deny" and the groups stay, unmapped (nogroup)."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if mapping.mode == "subordinate":
        os.setgroups([])


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


def join_from_parent(userns_fd: int) -> None:
    """Subordinate mode, in the supervisor once set-up is done: join A for good. The payload's
    files belong to a uid of the user's subordinate range (with a writable bind, to the user:
    one path for both), which an ordinary user can neither setfsuid to nor override on the
    host; in A, whose owner the user is, the kernel gives full capabilities
    (user_namespaces(7)), and the file API then acts as the payload, as it does as root;
    ``_caps.keep_supervisors_from_parent`` then drops all but what that and the close need.
    Capabilities in A count only for what A maps: nothing of the host's is gained. The fd
    is opened right after the maps are written, while the intermediate is still dumpable
    (later, /proc/<pid>/ns and setns through a pidfd are refused: ptrace access to a
    non-dumpable process). This comes after anything that needs the host's user namespace
    (newuidmap, the egress proxy)."""
    _linux.setns(userns_fd, _linux.CLONE_NEWUSER)


def drop_groups_from_parent(mapping: IdMapping) -> None:
    """In the supervisor once set-up is done: keep no supplementary group the payload has
    not. The workspace file API acts as the payload (setfsuid, setfsgid), but permission
    checks also count the process's supplementary groups, which setfsgid leaves alone: with
    root's group 0 (any root login), or a user's docker or adm group, the API could read or
    write what the payload cannot. Root and subordinate payloads have none (the
    intermediate and init drop them); in own mode the payload keeps the user's groups
    (setgroups is denied in its namespace), and so do we. As root, and in A after
    ``join_from_parent`` (whose setgroups is "allow"), we hold CAP_SETGID for this."""
    if mapping.mode != "own":
        os.setgroups([])


def become_payload_in_child() -> None:
    """In B: the payload's unprivileged ids. Leaving uid 0 clears permitted and
    effective capabilities (capabilities(7), "Effect of user ID changes")."""
    os.setresgid(PAYLOAD_GID, PAYLOAD_GID, PAYLOAD_GID)
    os.setresuid(PAYLOAD_UID, PAYLOAD_UID, PAYLOAD_UID)


def idmap_namespace(owner: tuple[int, int], payload: tuple[int, int]) -> int:
    """As root: an fd of a user namespace that maps ``owner`` (inside) to the payload's host
    ids (outside), and nothing else: the idmap of a writable bind (MOUNT_ATTR_IDMAP). Files
    the owner has on disk appear as the payload's, and what the payload writes lands as the
    owner's. A child makes the namespace and waits; its maps written, it is ended and reaped."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the namespace's holder
        code = 0
        try:
            os.close(ready_r)
            os.close(done_w)
            _linux.unshare(_linux.CLONE_NEWUSER)
            os.write(ready_w, b"x")
            os.read(done_r, 1)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"x":
            raise _linux.SyscallError(errno.ECHILD, "unshare", "the idmap namespace's holder failed")
        proc_dir = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            write_maps_from_parent(proc_dir, f"{owner[0]} {payload[0]} 1", f"{owner[1]} {payload[1]} 1")
            return os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_dir)
        finally:
            os.close(proc_dir)
    finally:
        os.close(ready_r)
        os.close(done_w)  # the holder reads EOF and exits
        os.waitpid(pid, 0)
