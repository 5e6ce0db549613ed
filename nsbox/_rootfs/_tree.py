"""The last pass over a new root: make it safe to bind, and describe it for the manifest.

Safe: no setuid or setgid bit, no file capability (``security.capability``, what setcap
writes: a setuid by another name), no device node. Inside a sandbox none of them would
work anyway (payloads run with no_new_privs; the root is bound nosuid,nodev), so this is
defence in depth for the tree on the host, where anyone who can reach it could use them.

The walk is fd-based and never follows a symlink (os.fwalk; every file is opened with
O_NOFOLLOW and checked with fstat before it is changed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field

_CAPABILITY_XATTR = "security.capability"
_DPKG_STATUS = "var/lib/dpkg/status"


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
    facts = TreeFacts()
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files, dir_fd in os.fwalk(tree):
        relative = os.path.relpath(folder, tree)
        for name in dirs + files:
            path = name if relative == "." else f"{relative}/{name}"
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                os.unlink(name, dir_fd=dir_fd)
                facts.devices_removed.append(path)
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                facts.size += info.st_blocks * 512
                facts.files += 1
            if (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)) and _strip(name, dir_fd, info.st_mode):
                facts.stripped.append(path)
    return facts


def _strip(name: str, dir_fd: int, mode: int) -> bool:
    """Clears setuid/setgid and drops a file capability; True if there was one."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if stat.S_ISDIR(mode):
        if not mode & (stat.S_ISUID | stat.S_ISGID):
            return False
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:  # an ordinary user's unreadable file: it cannot be setuid-anyone-else
        return False
    try:
        now = os.fstat(fd)
        if stat.S_IFMT(now.st_mode) != stat.S_IFMT(mode):
            return False  # replaced under us: not the file we looked at
        found = False
        if now.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.fchmod(fd, stat.S_IMODE(now.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            found = True
        if stat.S_ISREG(now.st_mode):
            try:
                os.removexattr(fd, _CAPABILITY_XATTR)
                found = True
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                    raise
        return found
    finally:
        os.close(fd)


def package_versions(tree: str) -> dict[str, str]:
    """Installed Debian packages and their versions, read from dpkg's status file (nothing
    of the tree is executed)."""
    versions: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open(os.path.join(tree, _DPKG_STATUS), encoding="utf-8", errors="replace") as f:
            text = f.read(64 << 20)
        for paragraph in text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in paragraph.splitlines() if ": " in line and not line.startswith(" ")
            )
            if fields.get("Status", "").endswith(" installed") and "Package" in fields and "Version" in fields:
                versions[fields["Package"]] = fields["Version"]
    return dict(sorted(versions.items()))
