"""Compiled filters, kept in memory and on disk, so that a one-shot ``nsbox exec`` neither
imports libseccomp's binding (~20 ms) nor compiles (~3 ms) when the policy was compiled before.

The key is a digest of everything the BPF depends on: the policy, the source of ``_policy``
and ``_filter`` (the rules and how they are built), the machine, pyseccomp's module file and
the libseccomp library file it loads (path, inode, size, mtime: an upgrade of either is a new
key). Where that library cannot be found, nothing is cached: a miss is always safe.

The directory is ``$XDG_CACHE_HOME/nsbox`` (else ``~/.cache/nsbox``), 0700. What is loaded
as a filter must not be anybody else's choice, so the directory is opened once (O_DIRECTORY
| O_NOFOLLOW) and used only if fstat says it belongs to us and nobody else may write it;
every file is then read, created and renamed relative to that fd (whoever controls a folder
above it can swap the path, not what the fd is), opened O_NOFOLLOW | O_NONBLOCK (a symlink
is refused, a FIFO does not block), and used only if fstat says it is a regular file of
ours that nobody else may write. The file's checksummed body holds its key (the file's
name): a file compiled for another policy, renamed to this one's name, is refused. A file is
loaded only if its framing, key and checksum hold; anything else is a miss, and the filters
are compiled. Files are written whole, then renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import stat
import struct
from dataclasses import asdict

from .._hostfiles import replace_at
from .._spec import Seccomp

_MAGIC = b"nsbox-bpf 2\n"  #: then the key (the file's name) and a newline, the programs, the checksum
_MAX_PROGRAMS = 4
_MAX_PROGRAM = 4096 * 8  #: BPF_MAXINSNS instructions of 8 bytes
_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBSECCOMP = "libseccomp.so.2"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@functools.lru_cache(maxsize=16)
def compile_filters(policy: Seccomp) -> tuple[bytes, ...]:
    """The BPF programs to load, in order; none when unconfined. Raises SpecError for a
    name that is no syscall of this machine (on a compile; a cached policy had none)."""
    if policy.unconfined:
        return ()
    path = _cache_path(policy)
    if path is not None and (programs := _read(path)) is not None:
        return programs
    from ._filter import compile_now  # imports pyseccomp: only on a miss

    programs = compile_now(policy)
    if path is not None:
        _write(path, programs)
    return programs


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nsbox")


def _cache_path(policy: Seccomp) -> str | None:
    library = _libseccomp_identity()
    if library is None:
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(policy), sort_keys=True).encode())
    digest.update(os.uname().machine.encode())
    digest.update(library.encode())
    for name in ("_policy.py", "_filter.py"):
        try:
            with open(os.path.join(_HERE, name), "rb") as f:
                digest.update(f.read())
        except OSError:
            return None
    return os.path.join(cache_dir(), f"seccomp-{digest.hexdigest()[:32]}.bpf")


def _libseccomp_identity() -> str | None:
    """pyseccomp's module file and the library it loads, by path, inode, size and mtime."""
    import importlib.util

    spec = importlib.util.find_spec("pyseccomp")
    if spec is None or spec.origin is None:
        return None
    multiarch = f"{os.uname().machine}-linux-gnu"
    parts = []
    for path in (
        spec.origin,
        *(
            os.path.join(d, _LIBSECCOMP)
            for d in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/lib64", "/usr/lib", "/lib")
        ),
    ):
        try:
            st = os.stat(path)
        except OSError:
            continue
        parts.append(f"{os.path.realpath(path)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        if len(parts) == 2:
            return "\n".join(parts)
    return None


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_directory(directory: str) -> int | None:
    """An fd of the cache directory if it is ours and nobody else may write it (checked on
    the fd: what is used is what was checked), else None."""
    fd = os.open(directory, _DIR_FLAGS)
    if not _trusted(os.fstat(fd)):
        os.close(fd)
        return None
    return fd


def _read(path: str) -> tuple[bytes, ...] | None:
    directory, name = os.path.split(path)
    try:
        dir_fd = _open_directory(directory)
        if dir_fd is None:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        limit = _MAX_PROGRAMS * (_MAX_PROGRAM + 4) + len(_MAGIC) + len(name) + 1 + 32
        if not stat.S_ISREG(st.st_mode) or not _trusted(st) or st.st_size > limit:
            return None
        chunks, size = [], 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return _unframe(b"".join(chunks), name)


def _frame(key: str, programs: tuple[bytes, ...]) -> bytes:
    body = _MAGIC + key.encode() + b"\n" + b"".join(struct.pack(">I", len(p)) + p for p in programs)
    return body + hashlib.sha256(body).digest()


def _unframe(data: bytes, key: str) -> tuple[bytes, ...] | None:
    """The programs of a cache file read as ``key``: None unless its body says ``key`` too,
    and its checksum and framing hold."""
    body, checksum = data[:-32], data[-32:]
    head = _MAGIC + key.encode() + b"\n"
    if not body.startswith(head) or hashlib.sha256(body).digest() != checksum:
        return None
    programs: list[bytes] = []
    at = len(head)
    while at < len(body):
        if at + 4 > len(body) or len(programs) == _MAX_PROGRAMS:
            return None
        (size,) = struct.unpack_from(">I", body, at)
        program = body[at + 4 : at + 4 + size]
        if not 0 < size <= _MAX_PROGRAM or size % 8 or len(program) != size:
            return None
        programs.append(program)
        at += 4 + size
    return tuple(programs) or None


def _write(path: str, programs: tuple[bytes, ...]) -> None:
    """Best effort: a cache that cannot be written is only a slower next start."""
    directory, name = os.path.split(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dir_fd = _open_directory(directory)
    except OSError:
        return
    if dir_fd is None:
        return
    try:
        with contextlib.suppress(OSError):
            replace_at(dir_fd, name, _frame(name, programs), 0o600)
    finally:
        os.close(dir_fd)
