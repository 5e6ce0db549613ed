"""Where built and imported roots live, and how one is put there atomically.

The data directory is ``$NSBOX_DATA_DIR``, else ``/var/lib/nsbox`` for root and
``$XDG_DATA_HOME/nsbox`` (``~/.local/share/nsbox``) for an ordinary user, who also sees the
roots root built in ``/var/lib/nsbox``. A root named NAME is ``rootfs/NAME/``, holding
``root/`` (the tree a sandbox binds read-only) and ``manifest.json``.

A build or an import writes into ``rootfs/.staging+NAME+*`` (0700) on the same filesystem
and is swapped into place (renameat2 RENAME_EXCHANGE) only once it is complete, so a root is
either the old one or the new one, never half of either nor missing. A failed or
interrupted one leaves at most its staging folder, which the next build of that name
removes (under ``rootfs/.NAME.lock``, held while a name is written).

A sandbox binds a root's folders, so deleting the old tree of a replaced or removed root
would take the files from under the sandboxes still using it. Each sandbox's supervisor holds
a shared flock on its root's folder (``hold``) for the sandbox's life; an old tree whose lock
cannot be taken exclusively is renamed ``.retired+NAME+*`` and kept, and removed by a later
build, import or removal of that name once no sandbox holds it any more. nsbox locks a
folder exclusively only once it is no longer at its name, so ``hold`` never waits for ever:
anyone who can open a root's folder can flock it, and a lock it cannot get within
``_HOLD_WAIT`` seconds is an error that says so.

Whoever can write a folder of the store chooses what a sandbox's root is (a NAME holding a
manifest and ``root -> /`` would make the host's / the sandbox's), so the data directory,
its ``rootfs/``, each ``NAME/`` and ``NAME/root`` are used only if they belong to the
caller (euid) or root and neither the group nor others may write them; anything else is
refused (RootfsError, saying what to chmod or chown). They are opened one below the other by
fd: ``rootfs``, ``NAME``, ``root`` and ``manifest.json`` with O_NOFOLLOW (a symlink is
refused), each checked with fstat; the manifest is read only if it is a regular file
(opened O_PATH and checked before it is read, so a FIFO or a device is never opened) of at
most ``_MANIFEST_LIMIT`` bytes. The data directory itself is the caller's choice: a
symlink there is followed, and what it leads to is checked. Once they are checked, nobody
but their owner or root can change them, so the paths below are used as paths.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import RootfsError, SpecError
from .._hostfiles import NotRegularFile, reopen_regular
from .._values import option_name
from ._tree import package_versions, sanitize

SYSTEM_DATA_DIR = "/var/lib/nsbox"
MANIFEST = "manifest.json"
TREE = "root"
MANIFEST_FORMAT = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_STAGING = ".staging+"  # '+' is in no name: ".staging+NAME+" is NAME's and no other's
_RETIRED = ".retired+"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MANIFEST_LIMIT = 16 << 20  #: bytes; a manifest lists packages and refused entries: a few hundred KB
_HOLD_WAIT = 10.0  #: seconds a sandbox start waits for a root's folder locked by someone else


@dataclass(frozen=True)
class StoredRoot:
    """A root of the data directory: its name, the tree to bind, and what its manifest says."""

    name: str
    path: str  #: the tree (``.../rootfs/NAME/root``), what ``--rootfs NAME`` binds
    manifest: dict[str, Any]
    up_to_date: bool = False  #: a build or import that found it already there and did nothing

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, **self.manifest}


def data_dir() -> str:
    explicit = os.environ.get("NSBOX_DATA_DIR")
    if explicit:
        return os.path.abspath(explicit)
    if os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "nsbox")


def roots_dir() -> str:
    return os.path.join(data_dir(), "rootfs")


def _search_dirs() -> list[str]:
    """Ours first; an ordinary user also sees the system's (unless NSBOX_DATA_DIR is set)."""
    dirs = [roots_dir()]
    system = os.path.join(SYSTEM_DATA_DIR, "rootfs")
    if not os.environ.get("NSBOX_DATA_DIR") and system not in dirs:
        dirs.append(system)
    return dirs


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise SpecError(
            "NAME", f"{name!r} is not a root name: lower-case letters, digits, '.', '_', '-'; at most 63; no '/'"
        )
    return name


def is_name(value: str) -> bool:
    """``--rootfs`` takes a NAME or a DIR: a value without '/' is a name (``./x`` is a folder)."""
    return "/" not in value and value not in (".", "..")


def resolve(name: str) -> str:
    """The tree of the root called ``name``, for ``--rootfs NAME``."""
    for directory in _search_dirs():
        root = _find_in(directory, name)
        if root is not None:
            return root.path
    known = sorted({r.name for r in _roots(strict=False)})
    hint = f" (this host has: {', '.join(known)})" if known else ""
    folder = f"; for the folder {name!r} here, write ./{name}" if os.path.isdir(name) else ""
    raise SpecError(
        option_name("rootfs"),
        f"no root named {name!r} in {' or '.join(_search_dirs())}{hint}: build one with "
        f"`nsbox rootfs build RECIPE` or `nsbox rootfs import IMAGE.tar {name}`{folder}",
    )


def find(name: str) -> StoredRoot | None:
    """The root ``name`` of our own data directory (the one builds write), if there is one."""
    return _find_in(roots_dir(), check_name(name))


def unchanged(name: str, section: str, identity: dict[str, object]) -> StoredRoot | None:
    """The root ``name`` if its manifest's ``section`` says it was made from ``identity``
    (a recipe's hash, an image's digest): marked up to date, for a build or import to skip.
    A root of that name that cannot be used (_Unusable) is not up to date: it is replaced."""
    try:
        root = find(name)
    except _Unusable:
        return None
    if root is None:
        return None
    made_from = root.manifest.get(section)
    if not isinstance(made_from, dict) or any(made_from.get(k) != v for k, v in identity.items()):
        return None
    return StoredRoot(root.name, root.path, root.manifest, up_to_date=True)


def list_roots() -> list[StoredRoot]:
    return _roots(strict=True)


def _roots(strict: bool) -> list[StoredRoot]:
    """Every root of the search directories, ours first; ``strict``: one that cannot be used
    is an error (else it is left out, as for the hint of an unknown name)."""
    roots: dict[str, StoredRoot] = {}
    for directory in _search_dirs():
        try:
            store = _open_store(directory)
        except RootfsError:
            if strict:
                raise
            continue
        if store is None:
            continue
        try:
            for name in sorted(os.listdir(store)):
                if name in roots or not _NAME.fullmatch(name):
                    continue
                try:
                    root = _load(store, directory, name)
                except _Unusable:
                    if strict:
                        raise
                    continue
                if root is not None:
                    roots[name] = root
        finally:
            os.close(store)
    return [roots[n] for n in sorted(roots)]


def remove(name: str) -> None:
    """Removes the root ``name`` of our own data directory; also one that cannot be used (a
    symlinked tree, a folder others may write: the remedy _Unusable gives)."""
    directory = roots_dir()
    check_name(name)
    store = _open_store(directory)
    try:
        try:
            found = store is not None and _load(store, directory, name) is not None
        except _Unusable:
            found = True
    finally:
        if store is not None:
            os.close(store)
    if not found:
        raise RootfsError(f"no root named {name!r} in {directory}", "`nsbox rootfs list` shows the roots there are")
    with _locked(directory, name):
        retired = os.path.join(directory, f"{_RETIRED}{name}+{secrets.token_hex(4)}")
        os.rename(os.path.join(directory, name), retired)  # the name is gone in one step
        _discard_unless_used(retired)


class _Unusable(RootfsError):
    """A root's folder that is there but may not be used (see the module's docstring)."""


def _find_in(directory: str, name: str) -> StoredRoot | None:
    store = _open_store(directory)
    if store is None:
        return None
    try:
        return _load(store, directory, name)
    finally:
        os.close(store)


def _open_store(directory: str) -> int | None:
    """An fd of ``directory`` (``DATA/rootfs``), None if there is none; RootfsError unless
    it and the data directory above it belong to us or root and nobody else may write them."""
    data = os.path.dirname(directory)
    try:
        data_fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the caller's: links followed
    except (FileNotFoundError, PermissionError):  # none, or not ours to read (root's, 0700): no roots
        return None
    except OSError as exc:
        raise RootfsError(f"the data directory {data} cannot be opened: {exc.strerror}", _ELSEWHERE) from None
    try:
        _check_trusted(data_fd, data, "the data directory")
        return _trusted_dir_at(data_fd, os.path.basename(directory), directory, "the roots' directory", RootfsError)
    finally:
        os.close(data_fd)


def _load(store: int, directory: str, name: str) -> StoredRoot | None:
    """The root ``name`` of the store open at ``store`` (``directory``): None if there is no
    such folder, or it holds no manifest and tree (a half-written one); _Unusable if it may
    not be used."""
    folder = os.path.join(directory, name)
    folder_fd = _trusted_dir_at(store, name, folder, f"the root {name!r}", _Unusable, name)
    if folder_fd is None:
        return None
    try:
        text = _read_manifest(folder_fd, folder, name)
        if text is None:
            return None
        try:
            manifest = json.loads(text)
        except (ValueError, RecursionError):
            return None
        tree = os.path.join(folder, TREE)
        tree_fd = _trusted_dir_at(folder_fd, TREE, tree, f"the root {name!r}'s tree", _Unusable, name)
        if tree_fd is None:
            return None
        os.close(tree_fd)
    finally:
        os.close(folder_fd)
    if not isinstance(manifest, dict):
        return None
    return StoredRoot(name, tree, manifest)


def _read_manifest(folder_fd: int, folder: str, name: str) -> bytes | None:
    """The manifest of the root's folder open at ``folder_fd``: None if there is none;
    _Unusable unless it is a regular file (checked O_PATH, before anything opens it) of at
    most _MANIFEST_LIMIT bytes."""
    shown = os.path.join(folder, MANIFEST)
    try:
        handle = os.open(MANIFEST, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    try:
        fd = reopen_regular(handle)
    except NotRegularFile as exc:
        raise _Unusable(f"{shown} is {exc.kind}, not a regular file: not read", _remove_hint(name)) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MANIFEST_LIMIT + 1)
    if len(data) > _MANIFEST_LIMIT:
        raise _Unusable(f"{shown} is larger than {_MANIFEST_LIMIT >> 20} MiB: not read", _remove_hint(name))
    return data


_ELSEWHERE = "or set NSBOX_DATA_DIR to a folder of your own"


def _check_trusted(fd: int, shown: str, what: str, error: type[RootfsError] = RootfsError) -> None:
    """``error`` unless the folder open at ``fd`` belongs to us or root and neither its group
    nor others may write it: whoever can write it decides what a sandbox's root is."""
    info = os.fstat(fd)
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise error(
            f"{what} {shown} belongs to uid {info.st_uid}, not to you (uid {me}) or root: "
            "whoever owns it decides what a sandbox's root is; not used",
            f"`chown {me} {shown}` (as root), {_ELSEWHERE}",
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(
            w for bit, w in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others")) if info.st_mode & bit
        )
        raise error(
            f"{what} {shown} may be written by {who} (mode {stat.S_IMODE(info.st_mode):04o}): whoever can write it "
            "decides what a sandbox's root is; not used",
            f"`chmod go-w {shown}`, {_ELSEWHERE}",
        )


def _trusted_dir_at(
    dir_fd: int, entry: str, shown: str, what: str, error: type[RootfsError], name: str | None = None
) -> int | None:
    """``_open_dir_at``, then ``_check_trusted`` on what it opened (closed if it fails)."""
    fd = _open_dir_at(dir_fd, entry, shown, error, name)
    if fd is not None:
        try:
            _check_trusted(fd, shown, what, error)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _open_dir_at(dir_fd: int, entry: str, shown: str, error: type[RootfsError], name: str | None = None) -> int | None:
    """An fd of the folder ``entry`` below ``dir_fd``, opened O_NOFOLLOW; None if there is
    none or it is no folder; ``error`` for a symlink (refused: not followed)."""
    try:
        return os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, PermissionError):  # PermissionError: not ours to read, no root of ours
        return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW: ENOTDIR for a link too
            raise error(f"{shown} cannot be opened: {exc.strerror}", "") from None
        try:
            link = stat.S_ISLNK(os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return None
        if not link:
            return None
        remedy = _remove_hint(name) if name else f"replace it with the folder it points to, {_ELSEWHERE}"
        raise error(f"{shown} is a symbolic link; no link is followed below the data directory", remedy) from None


def _remove_hint(name: str | None) -> str:
    return f"remove it (`nsbox rootfs remove {name}`, as its owner) and build or import it again"


class Staging:
    """A root being written: ``tree`` to fill, then ``commit(manifest)``; dropped otherwise."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        # 0700 while it is written (no other user may reach the tree before it is sanitized),
        # 0755 when committed: the sandbox's ids must be able to enter it.
        self.folder = tempfile.mkdtemp(prefix=f"{_STAGING}{name}+", dir=directory)
        self.tree = os.path.join(self.folder, TREE)
        os.mkdir(self.tree, 0o755)
        os.chmod(self.tree, 0o755)  # nosec B103  # not the umask's: so that they can enter it

    def finish(self, started: float, manifest: dict[str, Any], stripped: Iterable[str] = ()) -> StoredRoot:
        """The last pass over the tree (_tree.sanitize), the facts every manifest has (when,
        how long since ``started``, size, packages; ``stripped``: setuid bits found earlier),
        then commit."""
        facts = sanitize(self.tree)
        return self.commit(
            {
                **manifest,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - started, 1),
                **facts.to_dict(),
                "stripped_setuid": sorted({*facts.stripped, *stripped}),
                "packages": package_versions(self.tree),
            }
        )

    def commit(self, manifest: dict[str, Any]) -> StoredRoot:
        manifest = {"format": MANIFEST_FORMAT, "name": self.name, **manifest}
        with open(os.path.join(self.folder, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        final = os.path.join(self.directory, self.name)
        os.chmod(self.folder, 0o755)  # nosec B103  # a root's folder, entered by the sandbox's ids
        if os.path.lexists(final):  # swapped in one step: there is always a root of that name
            from .._linux import exchange_paths

            exchange_paths(self.folder, final)  # self.folder now holds the old root
            _discard_unless_used(self.folder)
        else:
            os.rename(self.folder, final)
        self.folder = ""
        return StoredRoot(self.name, os.path.join(final, TREE), manifest)

    def discard(self) -> None:
        if self.folder:
            _discard(self.folder)
            self.folder = ""


@contextlib.contextmanager
def staging(name: str) -> Iterator[Staging]:
    """A staging folder for ``name`` under its lock, removed unless committed."""
    directory = roots_dir()
    try:
        _make_dir(os.path.dirname(directory), parents=True)
        _make_dir(directory)
    except OSError as exc:
        raise RootfsError(
            f"cannot create the data directory {directory}: {exc.strerror}",
            "set NSBOX_DATA_DIR to a folder you can write",
        ) from exc
    store = _open_store(directory)  # ours or root's, and nobody else's to write: else refused
    if store is None:
        raise RootfsError(f"cannot open the data directory {directory}", "set NSBOX_DATA_DIR to a folder you can write")
    os.close(store)
    with _locked(directory, name):
        for entry in os.listdir(directory):  # what an interrupted build left; old trees now unused
            if entry.startswith((f"{_STAGING}{name}+", f"{_RETIRED}{name}+")):
                _discard_unless_used(os.path.join(directory, entry))
        stage = Staging(directory, name)
        try:
            yield stage
        finally:
            stage.discard()


def _make_dir(path: str, parents: bool = False) -> None:
    """A folder of the store, 0755 whatever the umask (one its group may write is refused);
    one that is there is left as it is (and checked by _open_store)."""
    if parents:
        os.makedirs(os.path.dirname(path), exist_ok=True)  # above the data directory: the caller's
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fd = os.open(path, _DIR_FLAGS)  # not through a symlink swapped in since
    try:
        os.fchmod(fd, 0o755)  # nosec B103  # a folder of the store: others read it, only its owner writes
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: str, name: str) -> Iterator[None]:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    fd = os.open(os.path.join(directory, f".{name}.lock"), flags, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RootfsError(
                f"{directory}/.{name}.lock is not a regular file", f"remove it: rm {directory}/.{name}.lock"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RootfsError(
                f"the root {name!r} is being built or imported by another process", "wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def hold(tree: str) -> int | None:
    """For a sandbox on the stored root whose tree is ``tree``: an fd of the root's folder
    with a shared flock, to keep while the sandbox lives. None for a folder of one's own (no
    manifest beside the tree, or a folder that is neither ours nor root's, or others may
    write: no root of a store). nsbox never locks a root's folder exclusively while it is at
    its name, so a lock held that long is someone else's: RootfsError after _HOLD_WAIT s."""
    if os.path.basename(tree) != TREE:
        return None
    folder = os.path.dirname(tree)
    deadline = time.monotonic() + _HOLD_WAIT
    while True:
        try:
            fd = os.open(folder, _DIR_FLAGS)
        except OSError:  # gone (removed), or a symlink: no root of a store
            return None
        try:
            if not _is_stored_root(fd):
                os.close(fd)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                replaced = not still_held(fd, tree)  # then nsbox is discarding it: the new one is wanted
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() >= deadline:
            raise RootfsError(
                f"the root's folder {folder} is locked by another process (builds, imports and removals never "
                f"lock a root that is in place): the sandbox waited {_HOLD_WAIT:g} s",
                f"find the process (`lslocks`, `fuser -v {folder}`) and end it",
            )
        time.sleep(0.01 if replaced else 0.1)


def _is_stored_root(fd: int) -> bool:
    """Whether the folder open at ``fd`` is a root of a store: a manifest that is a regular
    file, and the folder ours or root's, which nobody else may write."""
    try:
        manifest = os.stat(MANIFEST, dir_fd=fd, follow_symlinks=False)
        _check_trusted(fd, "", "")
    except (OSError, RootfsError):
        return False
    return stat.S_ISREG(manifest.st_mode)


def still_held(fd: int, tree: str) -> bool:
    """Whether ``tree`` is still the root held by ``fd`` (not replaced since it was taken)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(os.path.dirname(tree), follow_symlinks=False))
    except FileNotFoundError:
        return False


def _discard_unless_used(path: str) -> None:
    """Removes an old root's folder unless a sandbox holds it: then it is kept as retired."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(path)  # a symlink or a file where a root's folder was (_Unusable): no tree to keep
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not os.path.basename(path).startswith(_RETIRED):
                name = os.path.basename(path).split("+")[1]
                os.rename(path, os.path.join(os.path.dirname(path), f"{_RETIRED}{name}+{secrets.token_hex(4)}"))
            return
        _discard(path)  # under the exclusive lock: a sandbox that opens it now finds it replaced
    finally:
        os.close(fd)


def _discard(path: str) -> None:
    """rmtree without following symlinks (shutil's fd-based walk); the trees hold no mounts
    (builds mount only in a private mount namespace that is gone when they end)."""
    if os.path.lexists(path):
        shutil.rmtree(path)
