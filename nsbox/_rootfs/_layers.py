"""Applying an image layer (a tar stream) to a root, as the OCI image spec says, safely.

Every entry is written relative to an fd of the root, one path component at a time with
O_NOFOLLOW, so nothing an image holds can make a write land outside the root:

- a name that is absolute or has a ``..`` component is refused (not "cleaned": an image
  that asks for it is broken or hostile);
- a parent that is a symlink is refused, whatever it points to (``evil -> /etc`` in one
  layer, ``evil/passwd`` in the next: the classic);
- a hard link must name a file already in the root, by the same rules;
- a symlink whose target climbs above the root with ``..`` is refused: no image needs one
  (at ``/``, ``..`` is ``/``), and on the host it points out. An absolute target is kept:
  inside the sandbox it is resolved against the sandbox's root, which is what the image
  means by it, and the extractor itself never follows one;
- device nodes, FIFOs and sparse files are not created; setuid and setgid bits are not
  set; extended attributes (file capabilities among them) are not applied; owners are not
  kept (everything is the importer's: an image's uid 1000 is some host user's uid 1000,
  who would own those files of the root; inside a sandbox, the owner is not mapped anyway).

Whiteouts: ``.wh.NAME`` removes NAME of the layers below; ``.wh..wh..opq`` removes every
entry of its folder that the layers below put there. Entries of the same layer are kept
(the spec: a whiteout applies to the lower layers only), which is why the paths this layer
wrote are remembered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO

from .._errors import ImageError
from ._tree import DIR_FLAGS, NEW_FILE, Refused, open_parent

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_COPY_CHUNK = 1 << 20
#: Deeper entries are refused: walks and removals of a tree stay far from any limit.
MAX_DEPTH = 256
#: Beyond these a refusal is still counted but no longer listed (the manifest stays small).
_LISTED = 100


@dataclass
class LayerReport:
    refused: list[str] = field(default_factory=list)
    refused_count: int = 0
    skipped: list[str] = field(default_factory=list)  #: device nodes and FIFOs, not created
    stripped: list[str] = field(default_factory=list)  #: setuid/setgid bits not set

    def note(self, where: list[str], text: str) -> None:
        if len(where) < _LISTED:
            where.append(text)


def relative_parts(name: str) -> list[str]:
    """A tar name as path components inside the root; Refused if it would leave it, or
    is more than a file system takes (a NUL, a name over 255 bytes, MAX_DEPTH folders)."""
    if name.startswith("/"):
        raise Refused("an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused("a '..' component")
    if "\0" in name or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise Refused("a NUL byte or a name longer than 255 bytes")
    if len(parts) > MAX_DEPTH:
        raise Refused(f"more than {MAX_DEPTH} folders deep")
    return parts


def _leaves_root(link_parts: list[str], target: str) -> str:
    """Why a relative symlink at ``link_parts`` could point out of the root, or ''.

    Its '..' components must all come first, and be no more than the folders above it
    (real folders: an entry under a symlink is refused). A '..' after a name would climb
    from wherever that name leads, and a name may be a symlink itself (``here -> .`` makes
    ``here/here/../..`` reach above the root): no lexical count can tell, so it is refused.
    Every symlink kept obeys this, so no chain of relative ones gets out either."""
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        return f"a symlink to {target!r}: '..' after a name"
    if ups > len(link_parts) - 1:
        return f"a symlink to {target!r}, above the root"
    return ""


class LayerWriter:
    """Applies layers, bottom first, to the root folder ``tree``."""

    def __init__(self, tree: str) -> None:
        self.root_fd = os.open(tree, DIR_FLAGS)
        self.report = LayerReport()
        self._as_root = os.geteuid() == 0

    def close(self) -> None:
        os.close(self.root_fd)

    def apply(self, layer: IO[bytes], label: str) -> int:
        """Applies one layer; returns where its entries ended (what follows must be zeros)."""
        written: set[tuple[str, ...]] = set()
        try:
            with tarfile.open(fileobj=layer, mode="r|") as tar:
                for member in tar:
                    try:
                        self._entry(tar, member, written)
                    except Refused as exc:
                        self.report.refused_count += 1
                        self.report.note(self.report.refused, f"{label}: {member.name!r}: {exc}")
                return tar.offset
        except tarfile.TarError as exc:
            raise ImageError(f"{label} is not a valid tar stream: {exc}") from None

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, written: set[tuple[str, ...]]) -> None:
        parts = relative_parts(member.name)
        if not parts:
            return  # the root itself: its mode is ours
        *folder, base = parts
        whiteout = base.startswith(WHITEOUT)
        try:
            parent = open_parent(self.root_fd, folder, create=not whiteout)
        except FileNotFoundError:
            return  # a whiteout in a folder the layers below do not have: nothing to hide
        try:
            if base == OPAQUE:
                self._remove_below(parent, tuple(folder), written)
            elif whiteout:
                hidden = base[len(WHITEOUT) :]
                if hidden and hidden not in (".", "..") and (*folder, hidden) not in written:
                    _remove(parent, hidden)
            else:
                self._create(tar, member, parent, parts)
                # With its folders, which open_parent may have made without an entry of their own.
                written.update(tuple(parts[:i]) for i in range(1, len(parts) + 1))
        finally:
            os.close(parent)

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, parts: list[str]) -> None:
        base = parts[-1]
        path = "/".join(parts)
        if member.isdev():  # character, block or FIFO
            self.report.note(self.report.skipped, f"{path}: {'a FIFO' if member.isfifo() else 'a device node'}")
            return
        mode = member.mode & 0o7777
        if mode & (stat.S_ISUID | stat.S_ISGID):
            self.report.note(self.report.stripped, path)
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        if member.isdir():
            _make_dir(parent, base)
            fd = os.open(base, DIR_FLAGS, dir_fd=parent)
            try:
                # An ordinary user keeps write access to its folders: later entries must go in.
                os.fchmod(fd, mode if self._as_root else mode | 0o700)
            finally:
                os.close(fd)
            return
        if member.issym():
            target = member.linkname
            if not target or "\0" in target:
                raise Refused("a symlink with an empty target or a NUL byte")
            if not target.startswith("/") and (why := _leaves_root(parts, target)):
                raise Refused(why)
            _remove(parent, base)
            os.symlink(target, base, dir_fd=parent)
            return
        if member.islnk():
            source = relative_parts(member.linkname)
            if not source:
                raise Refused("a hard link to the root")
            try:
                source_parent = open_parent(self.root_fd, source[:-1], create=False)
            except Refused as exc:
                raise Refused(f"a hard link to {member.linkname!r}: {exc}") from None
            except FileNotFoundError:
                raise Refused(f"a hard link to {member.linkname!r}, which is not in the root") from None
            try:
                info = os.stat(source[-1], dir_fd=source_parent, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    raise Refused("a hard link to a folder")
                if stat.S_ISLNK(info.st_mode):  # the same link at another depth: checked again there
                    target = os.readlink(source[-1], dir_fd=source_parent)
                    if not target.startswith("/") and (why := _leaves_root(parts, target)):
                        raise Refused(f"a hard link to {why}")
                if tuple(source) != tuple(parts):
                    _remove(parent, base)
                    os.link(source[-1], base, src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise Refused(f"a hard link to {member.linkname!r}, which is not in the root") from None
            finally:
                os.close(source_parent)
            return
        if member.issparse():
            raise Refused("a sparse file (not supported: its declared size could be anything)")
        if not member.isreg():
            raise Refused(f"an entry of tar type {member.type!r}")
        _remove(parent, base)
        fd = os.open(base, NEW_FILE, 0o600, dir_fd=parent)
        try:
            data = tar.extractfile(member)
            if data is not None:
                while chunk := data.read(_COPY_CHUNK):
                    _write_all(fd, chunk)
            os.fchmod(fd, mode)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _remove_below(self, folder_fd: int, folder: tuple[str, ...], written: set[tuple[str, ...]]) -> None:
        """Everything below ``folder`` that this layer did not write (an opaque whiteout)."""
        for name in os.listdir(folder_fd):
            path = (*folder, name)
            if path not in written:
                _remove(folder_fd, name)
                continue
            with contextlib.suppress(OSError):  # written as a folder: recurse; else kept as is
                sub = os.open(name, DIR_FLAGS, dir_fd=folder_fd)
                try:
                    self._remove_below(sub, path, written)
                finally:
                    os.close(sub)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _make_dir(parent: int, name: str) -> None:
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        os.mkdir(name, 0o700, dir_fd=parent)
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent)
        os.mkdir(name, 0o700, dir_fd=parent)


def _remove(parent: int, name: str) -> None:
    """Removes ``name`` in ``parent`` if it is there (a folder with all it holds), no link followed."""
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)
