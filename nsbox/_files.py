"""The workspace file API, on the supervisor's side: race-free against the sandbox.

Init opens its /workspace (O_PATH) before any payload runs and hands the fd to the
supervisor. Every path is then resolved from that fd by the kernel, in one openat2(2)
with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: a symlink anywhere in
the path (planted, or swapped in while we work) is refused at the moment of the lookup
(ELOOP), as is any way out of the workspace (EXDEV). There is no check-then-use window
for a sandbox to race. Directories are created, and trees removed, one component at a
time through fds opened the same way; unlinkat and mkdirat never follow a link.

Every operation acts as the sandbox's user (setfsuid): files are created as its own, and
root's file capabilities are dropped meanwhile; the supervisor keeps no supplementary group
the payload has not (``_userns.drop_groups_from_parent``). So the API can do no more in the
workspace, or in a bind, than the sandbox itself could (a file it made unreadable stays
unreadable), and a write changes nothing before its checks have passed. Only regular files
are read: a FIFO would block us, anything else is not data.
Sizes are capped: a sandbox controls what it leaves in its workspace.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _linux
from ._errors import SecurityError, SpecError
from ._spec import WORKSPACE

#: The largest file read_file, write_file, upload and download move.
FILE_LIMIT = 64 * 1024 * 1024
#: The most entries list_files returns, and the deepest tree remove(recursive=True) walks.
MAX_ENTRIES = 10_000
MAX_DEPTH = 128
_RESOLVE = _linux.RESOLVE_BENEATH | _linux.RESOLVE_NO_SYMLINKS | _linux.RESOLVE_NO_MAGICLINKS
_R = TypeVar("_R")
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}


@dataclass(frozen=True)
class FileInfo:
    """An entry of ``list_files``: a symlink is listed as one, never followed."""

    name: str
    type: str  #: "file", "dir", "symlink" or "other"
    size: int
    mode: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileInfo:
        """From the supervisor's reply (checked: it describes what the sandbox made)."""
        name, kind, size, mode = data.get("name"), data.get("type"), data.get("size"), data.get("mode")
        if not (isinstance(name, str) and kind in (*_TYPES.values(), "other")):
            raise SpecError("entries", "malformed directory entry")
        if not (isinstance(size, int) and isinstance(mode, int)):
            raise SpecError("entries", "malformed directory entry")
        return cls(name, str(kind), size, mode)


def workspace_path(path: str) -> str:
    """``path`` (relative to /workspace, or absolute under it) as a clean relative path;
    SecurityError for anything that leaves the workspace."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise SpecError("path", f"{path!r} is not a path (a non-empty string without NUL bytes)")
    if path.startswith("/"):
        if path != WORKSPACE and not path.startswith(WORKSPACE + "/"):
            raise SecurityError(f"{path!r} is outside the workspace ({WORKSPACE})")
        path = path[len(WORKSPACE) :].lstrip("/") or "."
    clean = posixpath.normpath(path)
    if clean == ".." or clean.startswith("../"):
        raise SecurityError(f"{path!r} leads out of the workspace")
    return clean


def _as_owner(method: Callable[..., _R]) -> Callable[..., _R]:
    @functools.wraps(method)
    def wrapper(self: Workspace, *args: Any) -> _R:
        with _linux.filesystem_ids(*self.owner):
            return method(self, *args)

    return wrapper


class Workspace:
    """File operations below one directory fd (the sandbox's /workspace)."""

    def __init__(self, root_fd: int, owner: tuple[int, int]) -> None:
        self.root_fd = root_fd
        self.owner = owner

    def close(self) -> None:
        os.close(self.root_fd)

    # -- the operations ------------------------------------------------------------------
    @_as_owner
    def read(self, path: str) -> bytes:
        rel = workspace_path(path)
        with self._open(rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, path) as fd:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecurityError(f"{path!r} is not a regular file ({_kind(info.st_mode)}): not read")
            if info.st_size > FILE_LIMIT:
                raise SpecError("path", f"{path!r} has {info.st_size} bytes; at most {FILE_LIMIT} are read")
            chunks, size = [], 0
            while chunk := os.read(fd, min(1 << 20, FILE_LIMIT + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > FILE_LIMIT:  # it grew while we read
                    raise SpecError("path", f"{path!r} has more than {FILE_LIMIT} bytes")
            return b"".join(chunks)

    @_as_owner
    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        rel = workspace_path(path)
        if rel == ".":
            raise SpecError("path", "the workspace itself is not a file")
        if len(data) > FILE_LIMIT:
            raise SpecError("data", f"{len(data)} bytes; at most {FILE_LIMIT} are written")
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise SpecError("mode", f"{mode!r} is not a permission mode (0o000-0o777)")
        parent, name = posixpath.split(rel)
        with self._directory(parent, path, create=True) as dirfd:
            # No O_TRUNC: nothing changes until every check has passed (a file the payload
            # may write but not chmod would otherwise be emptied, then refused).
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
            with _refusing(path):
                fd = _linux.openat2(dirfd, name, flags | os.O_CLOEXEC, _RESOLVE, 0o600)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise SecurityError(f"{path!r} is not a regular file: not written")
                if stat.S_IMODE(info.st_mode) != mode:
                    if info.st_uid != self.owner[0]:  # as chmod(2) would answer, before it changes anything
                        raise PermissionError(errno.EPERM, f"not the owner: its mode cannot be set to {mode:#o}", path)
                    os.fchmod(fd, mode)
                os.ftruncate(fd, 0)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    @_as_owner
    def list(self, path: str = ".") -> list[dict[str, Any]]:
        rel = workspace_path(path)
        with self._open(rel, os.O_RDONLY | os.O_DIRECTORY, path) as fd:
            entries: list[dict[str, Any]] = []
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) == MAX_ENTRIES:
                        raise SpecError("path", f"{path!r} holds more than {MAX_ENTRIES} entries")
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        info = entry.stat(follow_symlinks=False)
                        entries.append(
                            {
                                "name": entry.name,
                                "type": _kind(info.st_mode),
                                "size": info.st_size,
                                "mode": stat.S_IMODE(info.st_mode),
                            }
                        )
        return sorted(entries, key=lambda e: str(e["name"]))

    @_as_owner
    def remove(self, path: str, recursive: bool = False) -> None:
        rel = workspace_path(path)
        if rel == ".":
            raise SpecError("path", "the workspace itself cannot be removed")
        parent, name = posixpath.split(rel)
        with self._directory(parent, path) as dirfd:
            try:
                os.unlink(name, dir_fd=dirfd)
            except IsADirectoryError:
                if recursive:
                    self._remove_tree(dirfd, name, path, MAX_DEPTH)
                os.rmdir(name, dir_fd=dirfd)

    # -- helpers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, rel: str, flags: int, shown: str, dirfd: int | None = None) -> Iterator[int]:
        with _refusing(shown):
            fd = _linux.openat2(self.root_fd if dirfd is None else dirfd, rel, flags | os.O_CLOEXEC, _RESOLVE)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _directory(self, rel: str, shown: str, create: bool = False) -> Iterator[int]:
        """An fd of directory ``rel``; with ``create``, missing components are made."""
        if not create or rel in ("", "."):
            with self._open(rel or ".", os.O_PATH | os.O_DIRECTORY, shown) as fd:
                yield fd
            return
        fd = os.dup(self.root_fd)
        try:
            for part in rel.split("/"):
                try:
                    with _refusing(shown):
                        child = _linux.openat2(fd, part, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, _RESOLVE)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):  # made meanwhile: opened (and checked) below
                        os.mkdir(part, 0o755, dir_fd=fd)
                    with _refusing(shown):
                        child = _linux.openat2(fd, part, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, _RESOLVE)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _remove_tree(self, parent_fd: int, name: str, shown: str, depth: int) -> None:
        """Empty directory ``name`` (not following any link); the caller removes it."""
        if depth == 0:
            raise SpecError("path", f"{shown!r} is nested deeper than {MAX_DEPTH} directories")
        with self._open(name, os.O_RDONLY | os.O_DIRECTORY, shown, dirfd=parent_fd) as fd:
            with os.scandir(fd) as it:
                names = [entry.name for entry in it]
            for child in names:
                try:
                    os.unlink(child, dir_fd=fd)
                except IsADirectoryError:
                    self._remove_tree(fd, child, shown, depth - 1)
                    os.rmdir(child, dir_fd=fd)
                except FileNotFoundError:
                    pass


@contextlib.contextmanager
def _refusing(shown: str) -> Iterator[None]:
    """openat2's refusals as SecurityError; other errors as the OSError they are."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecurityError(f"{shown!r}: a symbolic link in the path; links are not followed") from None
        if exc.errno == errno.EXDEV:
            raise SecurityError(f"{shown!r} leads out of the workspace") from None
        if exc.errno == errno.ENXIO:
            raise SecurityError(f"{shown!r} is not a regular file") from None
        raise OSError(exc.errno, os.strerror(exc.errno or 0), shown) from None


def _kind(mode: int) -> str:
    return _TYPES.get(stat.S_IFMT(mode), "other")
