"""The last pass over a new root: make it safe to bind, and describe it for the manifest.

Safe: no setuid or setgid bit, no file capability (``security.capability``, what setcap
writes: a setuid by another name), no device node, nothing writable but by its owner, and
(as root) every owner root. Inside a sandbox none of them would
work anyway (payloads run with no_new_privs; the root is bound nosuid,nodev), so this is
defence in depth for the tree on the host, where anyone who can reach it could use them.

The walk is fd-based and never follows or opens a symlink (every file is opened with
O_NOFOLLOW and checked with fstat before it is changed). ``open_parent`` is the one way into a
folder of a root for every writer here (layers, a recipe's files) and reader (dpkg's status):
a component at a time, O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID
_CAPABILITY_XATTR = "security.capability"
_DPKG_STATUS = "var/lib/dpkg/status"


class Refused(Exception):
    """An entry that is not applied; its message says why."""


def open_parent(root_fd: int, parts: Sequence[str], create: bool = True) -> int:
    """An fd of the folder ``parts`` below the root, each component opened with O_NOFOLLOW
    (created 0755 when missing); Refused if one is a symlink or not a folder."""
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            try:
                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW: ENOTDIR for both
                    link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                    kind = "a symlink" if link else "not a folder"
                    raise Refused(f"its parent {'/'.join(parts[: i + 1])} is {kind}") from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class TreeFacts:
    size: int = 0  #: bytes on disk, each hard-linked file once
    files: int = 0
    stripped: list[str] = field(default_factory=list)  #: setuid/setgid bits or file capabilities removed
    devices_removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "size_bytes": self.size,
            "files": self.files,
            "stripped_setuid": self.stripped,
            "removed_devices": self.devices_removed,
        }


def sanitize(tree: str) -> TreeFacts:
    """Every entry of ``tree``, folder by folder (no recursion: depth is bounded by the
    stack we keep, not Python's), through open_parent: no symlink is followed or opened."""
    facts = TreeFacts()
    seen: set[tuple[int, int]] = set()
    as_root = os.geteuid() == 0
    root_fd = os.open(tree, DIR_FLAGS)
    try:
        pending: list[tuple[str, ...]] = [()]
        while pending:
            parts = pending.pop()
            folder_fd = open_parent(root_fd, parts, create=False)
            try:
                with os.scandir(folder_fd) as listing:
                    entries = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
                for name, info in entries:
                    path = "/".join((*parts, name))
                    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                        os.unlink(name, dir_fd=folder_fd)
                        facts.devices_removed.append(path)
                        continue
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        facts.size += info.st_blocks * 512
                        facts.files += 1
                    if stat.S_ISDIR(info.st_mode):
                        pending.append((*parts, name))
                    if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
                        if _fix(name, folder_fd, info.st_mode, as_root):
                            facts.stripped.append(path)
                    elif as_root and (info.st_uid, info.st_gid) != (0, 0):
                        os.chown(name, 0, 0, dir_fd=folder_fd, follow_symlinks=False)  # a symlink
            finally:
                os.close(folder_fd)
    finally:
        os.close(root_fd)
    return facts


def _fix(name: str, dir_fd: int, mode: int, as_root: bool) -> bool:
    """Drops a file capability, gives the file to root (when we are root: an image's uid
    1000 is some host user's), clears setuid/setgid and the group's and others' write bits
    (the tree is read-only where it is used; on the host they would let anyone change a
    root that every sandbox sees). True if there was a setuid/setgid bit or a capability."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if stat.S_ISDIR(mode):
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:  # an ordinary user's unreadable file: it cannot be setuid-anyone-else
        return False
    try:
        now = os.fstat(fd)
        if stat.S_IFMT(now.st_mode) != stat.S_IFMT(mode):
            return False  # replaced under us: not the file we looked at
        found = bool(now.st_mode & _SETID)
        if stat.S_ISREG(now.st_mode):
            try:
                os.removexattr(fd, _CAPABILITY_XATTR)
                found = True
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                    raise
        if as_root and (now.st_uid, now.st_gid) != (0, 0):
            os.fchown(fd, 0, 0)
        wanted = stat.S_IMODE(now.st_mode) & ~(_SETID | stat.S_IWGRP | stat.S_IWOTH)
        if wanted != stat.S_IMODE(now.st_mode) or found:
            os.fchmod(fd, wanted)
        return found
    finally:
        os.close(fd)


def package_versions(tree: str) -> dict[str, str]:
    """Installed Debian packages and their versions, read from dpkg's status file (nothing
    of the tree is executed, and no symlink of it followed: an image's own could point at a
    file of the host)."""
    versions: dict[str, str] = {}
    *folder, name = _DPKG_STATUS.split("/")
    with contextlib.suppress(OSError, Refused):  # no dpkg here, or not a file inside the root
        root_fd = os.open(tree, DIR_FLAGS)
        try:
            parent = open_parent(root_fd, folder, create=False)
        finally:
            os.close(root_fd)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return versions
            text = f.read(64 << 20)
        for paragraph in text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in paragraph.splitlines() if ": " in line and not line.startswith(" ")
            )
            if fields.get("Status", "").endswith(" installed") and "Package" in fields and "Version" in fields:
                versions[fields["Package"]] = fields["Version"]
    return dict(sorted(versions.items()))
