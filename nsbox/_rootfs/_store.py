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
build, import or removal of that name once no sandbox holds it any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import RootfsError, SpecError
from .._values import option_name
from ._tree import package_versions, sanitize

SYSTEM_DATA_DIR = "/var/lib/nsbox"
MANIFEST = "manifest.json"
TREE = "root"
MANIFEST_FORMAT = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_STAGING = ".staging+"  # '+' is in no name: ".staging+NAME+" is NAME's and no other's
_RETIRED = ".retired+"


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
        root = _load(directory, name)
        if root is not None:
            return root.path
    known = sorted({r.name for r in list_roots()})
    hint = f" (this host has: {', '.join(known)})" if known else ""
    folder = f"; for the folder {name!r} here, write ./{name}" if os.path.isdir(name) else ""
    raise SpecError(
        option_name("rootfs"),
        f"no root named {name!r} in {' or '.join(_search_dirs())}{hint}: build one with "
        f"`nsbox rootfs build RECIPE` or `nsbox rootfs import IMAGE.tar {name}`{folder}",
    )


def find(name: str) -> StoredRoot | None:
    """The root ``name`` of our own data directory (the one builds write), if there is one."""
    return _load(roots_dir(), check_name(name))


def unchanged(name: str, section: str, identity: dict[str, object]) -> StoredRoot | None:
    """The root ``name`` if its manifest's ``section`` says it was made from ``identity``
    (a recipe's hash, an image's digest): marked up to date, for a build or import to skip."""
    root = find(name)
    if root is None:
        return None
    made_from = root.manifest.get(section)
    if not isinstance(made_from, dict) or any(made_from.get(k) != v for k, v in identity.items()):
        return None
    return StoredRoot(root.name, root.path, root.manifest, up_to_date=True)


def list_roots() -> list[StoredRoot]:
    roots: dict[str, StoredRoot] = {}
    for directory in _search_dirs():
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                if name not in roots and _NAME.fullmatch(name) and (root := _load(directory, name)):
                    roots[name] = root
    return [roots[n] for n in sorted(roots)]


def remove(name: str) -> None:
    directory = roots_dir()
    if _load(directory, check_name(name)) is None:
        raise RootfsError(f"no root named {name!r} in {directory}", "`nsbox rootfs list` shows the roots there are")
    with _locked(directory, name):
        retired = os.path.join(directory, f"{_RETIRED}{name}+{secrets.token_hex(4)}")
        os.rename(os.path.join(directory, name), retired)  # the name is gone in one step
        _discard_unless_used(retired)


def _load(directory: str, name: str) -> StoredRoot | None:
    folder = os.path.join(directory, name)
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    tree = os.path.join(folder, TREE)
    if not isinstance(manifest, dict) or not os.path.isdir(tree):
        return None
    return StoredRoot(name, tree, manifest)


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
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise RootfsError(
            f"cannot create the data directory {directory}: {exc.strerror}",
            "set NSBOX_DATA_DIR to a folder you can write",
        ) from exc
    with _locked(directory, name):
        for entry in os.listdir(directory):  # what an interrupted build left; old trees now unused
            if entry.startswith((f"{_STAGING}{name}+", f"{_RETIRED}{name}+")):
                _discard_unless_used(os.path.join(directory, entry))
        stage = Staging(directory, name)
        try:
            yield stage
        finally:
            stage.discard()


@contextlib.contextmanager
def _locked(directory: str, name: str) -> Iterator[None]:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(os.path.join(directory, f".{name}.lock"), flags, 0o644)
    try:
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
    with a shared flock, to keep while the sandbox lives (None for a folder of one's own)."""
    folder = os.path.dirname(tree)
    if os.path.basename(tree) != TREE or not os.path.isfile(os.path.join(folder, MANIFEST)):
        return None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def still_held(fd: int, tree: str) -> bool:
    """Whether ``tree`` is still the root held by ``fd`` (not replaced since it was taken)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(os.path.dirname(tree), follow_symlinks=False))
    except FileNotFoundError:
        return False


def _discard_unless_used(path: str) -> None:
    """Removes an old root's folder unless a sandbox holds it: then it is kept as retired."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
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
