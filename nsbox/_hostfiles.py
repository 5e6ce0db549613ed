"""Host files that nsbox reads and writes with the caller's rights, at paths the caller names.

The caller names the path, but the folders on it may be writable by someone else: a
sandbox (through a writable bind, ``--bind HOSTDIR:/workspace/shared``) or another user of
the machine (a shared folder). Either can plant a symlink (to /etc/shadow, to a root-owned
file that the write would replace), a FIFO (an open that never returns), a device, or swap
a folder on the path while nsbox works. So, by default:

* every component of the path is resolved by the kernel with ``openat2(RESOLVE_NO_SYMLINKS
  | RESOLVE_NO_MAGICLINKS)``: a symlink anywhere on it, planted or swapped in, is refused at
  the moment of the lookup (``SecurityError``); ``follow_symlinks=True`` is for paths the
  caller knows are theirs alone;
* only regular files are read: the file is first opened ``O_PATH`` (which opens nothing:
  no FIFO blocks, no device acts), checked with fstat, then reopened through that very fd;
* a file is written to a new temporary file in the destination's folder (``O_EXCL``,
  ``0600``), then renamed over the name: never written through whatever is at the name,
  and a reader never sees half of it; an existing destination that is not a regular file
  is refused;
* a log is appended to only if it is a regular file with one link, opened ``O_NOFOLLOW |
  O_NONBLOCK`` (and created ``0600``);
* a path given at set-up (a bind source, the wheelhouse, a root folder) is made canonical
  by ``canonical_path``, which follows only symlinks that nobody but root could have put
  there; the supervisor later opens the canonical path without following any symlink.

Each function raises SecurityError for a refused path, SpecError (naming ``what``) for bad
input or a file over ``limit``, and OSError for the rest (no such file, no permission).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from . import _linux
from ._errors import SecurityError, SpecError

_NO_LINKS = _linux.RESOLVE_NO_SYMLINKS | _linux.RESOLVE_NO_MAGICLINKS


def read_host_file(path: str | os.PathLike[str], limit: int, *, what: str, follow_symlinks: bool = False) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes."""
    shown = os.fspath(path)
    with _refusing(shown):
        handle = _linux.openat2(
            _linux.AT_FDCWD, _checked(shown, what), os.O_PATH | os.O_CLOEXEC, _resolve(follow_symlinks)
        )
    try:
        fd = reopen_regular(handle)
    except NotRegularFile as exc:
        raise SecurityError(f"{shown!r} is {exc.kind}, not a regular file: not read") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SpecError(what, f"{shown!r} has more than {limit} bytes; at most {limit} are read")
    return data


class NotRegularFile(Exception):
    """What ``reopen_regular`` found instead of a regular file (``kind``: "a FIFO"...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def reopen_regular(handle: int) -> int:
    """An fd to read the file that the O_PATH fd ``handle`` refers to (closed here), if it is
    a regular file, else NotRegularFile. The O_PATH open opened nothing (no FIFO blocked, no
    device acted), and the reopen through /proc/self/fd is of that very inode, whatever its
    path holds by now."""
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(file_kind(mode))
        return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(handle)


def write_host_file(path: str | os.PathLike[str], data: bytes, *, what: str, follow_symlinks: bool = False) -> None:
    """``path`` holds exactly ``data`` afterwards, as a new regular file renamed into place
    (an existing regular file's permission bits are kept; a new one gets 0666 less the
    umask, as open(2) would give it)."""
    shown = os.fspath(path)
    if follow_symlinks:
        shown = os.path.realpath(shown)
    with _directory_of(shown, what, follow_symlinks) as (dirfd, name):
        try:
            existing = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise SecurityError(f"{shown!r} is {file_kind(existing.st_mode)}: not replaced")
        final_mode = 0o666 & ~_umask() if existing is None else stat.S_IMODE(existing.st_mode) & 0o777
        replace_at(dirfd, name, data, final_mode)


def replace_at(dirfd: int, name: str, data: bytes, mode: int) -> None:
    """``name`` in the folder open at ``dirfd`` holds ``data`` (permission bits ``mode``)
    afterwards: written to a new temporary file there (O_EXCL, 0600 until it is complete),
    then renamed over ``name``, so nothing at ``name`` is written through or seen half
    written. A failure leaves no temporary file."""
    temporary = f".{name[:200]}.nsbox-{os.urandom(6).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=dirfd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dirfd)
        raise


def open_host_log(path: str | os.PathLike[str], *, what: str) -> int:
    """An fd to append to the log ``path`` (created 0600): a regular file with one link."""
    shown = os.fspath(path)
    with _directory_of(shown, what, follow_symlinks=False) as (dirfd, name):
        with contextlib.suppress(FileNotFoundError):  # checked before the open: no device is ever opened
            _refuse_unless_log(shown, os.stat(name, dir_fd=dirfd, follow_symlinks=False))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        with _refusing(shown):
            fd = os.open(name, flags, 0o600, dir_fd=dirfd)
        try:
            _refuse_unless_log(shown, os.fstat(fd))  # and after it: what was opened is what was checked
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd


#: Symlinks followed on one path, at most (as the kernel's MAXSYMLINKS).
MAX_LINKS = 40


def canonical_path(path: str | os.PathLike[str], *, what: str) -> str:
    """``path`` made absolute, with its symlinks resolved: but only links owned by root in a
    folder owned by root that nobody else can write (``/lib -> usr/lib``, ``/var/run ->
    /run``). Any other link on the way could have been planted, by a sandbox through a
    writable bind or by another user, to swap what the caller names for something else (the
    host's ``/``): SpecError naming ``what``, and the path the link leads to, for the caller
    to give instead if that is what they mean. A path that does not exist is returned as far
    as it resolved, with the rest appended (the caller checks existence)."""
    shown = os.fspath(path)
    absolute = os.path.normpath(os.path.abspath(_checked(shown, what)))
    with contextlib.suppress(OSError):  # the common case, in one call: no symlink on the way at all
        os.close(_linux.openat2(_linux.AT_FDCWD, absolute, os.O_PATH | os.O_CLOEXEC, _NO_LINKS))
        return absolute
    pending = [p for p in reversed(absolute.split("/")) if p]
    resolved, links = "/", 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return os.path.join(candidate, *reversed(pending))
        if not stat.S_ISLNK(info.st_mode):
            resolved = candidate
            continue
        folder = os.lstat(resolved)
        if info.st_uid != 0 or folder.st_uid != 0 or folder.st_mode & 0o022:
            raise SpecError(
                what,
                f"{shown!r} goes through the symbolic link {candidate!r}, which someone other than root could have"
                f" made or replaced (it leads to {os.path.realpath(candidate)!r}; give that path if you mean it)",
            )
        links += 1
        if links > MAX_LINKS:
            raise SpecError(what, f"{shown!r}: more than {MAX_LINKS} symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = "/"
        pending.extend(p for p in reversed(target.split("/")) if p)
    return resolved


#: ioctl(2) on a namespace file, <linux/nsfs.h>: which kind of namespace it is.
_NS_GET_NSTYPE = 0xB703


def is_net_namespace(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a network namespace file (``/run/netns/NAME``, ``/proc/PID/ns/net``),
    checked without opening anything else: a FIFO or a device there is never opened."""
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):  # namespace files are regular files of nsfs
            return False
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    finally:
        os.close(handle)
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _linux.CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def _refuse_unless_log(shown: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SecurityError(f"{shown!r} is {file_kind(info.st_mode)}: not a log file")
    if info.st_nlink != 1:
        raise SecurityError(f"{shown!r} has {info.st_nlink} hard links: not a log file of its own")


@contextlib.contextmanager
def _directory_of(shown: str, what: str, follow_symlinks: bool) -> Iterator[tuple[int, str]]:
    """An fd of the folder that holds ``shown`` (resolved without symlinks), and the name in it."""
    parent, name = os.path.split(_checked(shown, what).rstrip("/") or "/")
    if name in ("", ".", ".."):
        raise SpecError(what, f"{shown!r} does not name a file")
    with _refusing(shown):
        dirfd = _linux.openat2(
            _linux.AT_FDCWD, parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, _resolve(follow_symlinks)
        )
    try:
        yield dirfd, name
    finally:
        os.close(dirfd)


def _checked(shown: str, what: str) -> str:
    if not shown or "\0" in shown:
        raise SpecError(what, f"{shown!r} is not a path")
    return shown


def _resolve(follow_symlinks: bool) -> int:
    return _linux.RESOLVE_NO_MAGICLINKS if follow_symlinks else _NO_LINKS


@contextlib.contextmanager
def _refusing(shown: str) -> Iterator[None]:
    """A symlink met by openat2 (ELOOP) or O_NOFOLLOW as SecurityError; the rest as the
    OSError it is, naming the path."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecurityError(
                f"{shown!r}: a symbolic link in the path; links are not followed (follow_symlinks=True"
                " if the path is yours alone)"
            ) from None
        if exc.errno == errno.ENXIO:  # O_NONBLOCK open of a FIFO without a reader
            raise SecurityError(f"{shown!r} is not a regular file") from None
        raise OSError(exc.errno, os.strerror(exc.errno or 0), shown) from None


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    return 0o022


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFREG: "a regular file",
}


def file_kind(mode: int) -> str:
    """What kind of file ``mode`` (st_mode) is, in words: "a FIFO", "a directory"..."""
    return _KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")
