"""``nsbox rootfs build RECIPE``: a Debian root from a recipe, with debootstrap and apt.

The steps, in order:

1. ``debootstrap --variant=minbase`` of the recipe's suite into a staging folder, with the
   Debian archive keyring given explicitly: debootstrap without a keyring warns and goes on
   *unverified*; with one it refuses a Release file whose signature does not check.
2. With a ``security_mirror``, ``apt-get update`` and ``upgrade`` from ``SUITE-security``
   (signed, checked with the new root's own archive keyring); then ``apt-get install
   --no-install-recommends`` of the recipe's packages, chrooted into the new root, with a
   private /proc and a /dev of five bound device files on a tmpfs.
3. The recipe's files; apt's caches and package lists dropped (tens of MB, and stale).
   Both go through the tree's fd a component at a time, with O_NOFOLLOW (``open_parent``): the
   tree was shaped by maintainer scripts, and a symlink in it (``var -> /var``) must not make
   a write or a removal land on the build host.
4. The tree made safe (no setuid/setgid bit, file capability or device node: _tree.py) and
   described (size, package versions) in the manifest; then renamed into place.

Every command runs under ``unshare --mount --propagation private --pid --fork --kill-child``
(util-linux): the mounts that debootstrap and step 2 make (proc, sys, dev) are in a mount
namespace of their own, gone when the command ends however it ends: none can outlive a
failed build, and removing a failed build's folder never descends into a mounted /proc or
/sys. The pid namespace dies with unshare, so an interrupted build leaves no dpkg still
writing into the folder being removed.

The packages' maintainer scripts run as root in that chroot, as with any debootstrap: a
recipe names Debian packages from a signed archive, not untrusted code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess  # nosec B404  # debootstrap, chroot and apt-get, with argument lists, no shell
import time
from collections import deque
from collections.abc import Callable, Iterable

from .._errors import RootfsError
from . import _store
from ._recipe import Recipe, find_recipe, load_recipe
from ._tree import DIR_FLAGS, NEW_FILE, Refused, open_parent

Progress = Callable[[str], None]
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
TOOLS = ("debootstrap", "unshare", "chroot")
INSTALL_TOOLS = "apt-get install debootstrap debian-archive-keyring"
#: Step 2 in the private mount namespace: $1 is the root, $2 "upgrade" (security updates,
#: whose sources.list entry is written first) or "", the rest are the packages to install.
_CHROOT_APT = r"""
set -eu
root=$1; upgrade=$2; shift 2
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,noexec,mode=0755,size=1M nsbox-dev "$root/dev"
for d in null zero full random urandom; do : > "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
mkdir "$root/dev/pts"; ln -s pts/ptmx "$root/dev/ptmx"  # apt logs through a pty
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 nsbox-pts "$root/dev/pts"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
if [ "$upgrade" = upgrade ]; then
    chroot "$root" apt-get update -q
    chroot "$root" apt-get upgrade -y -q --no-install-recommends
fi
[ $# -eq 0 ] || chroot "$root" apt-get install -y -q --no-install-recommends -- "$@"
chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
"""
_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}
#: What apt leaves that a read-only root does not need: the downloaded .debs, lists, caches.
_DROPPED = ("var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old")
#: debootstrap copies these from the build host (its name, its DNS servers): a root is not
#: the build host's. A sandbox has only loopback unless --net allow, which uses a proxy.
_NOT_THE_BUILD_HOSTS = (("etc/hostname", "nsbox\n"), ("etc/resolv.conf", ""))
_PER_PACKAGE = (
    *(f"I: {verb} " for verb in ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")),
    "Get:",
    "Unpacking ",
    "Setting up ",
)
_SHOWN = ("I: ", "E: ", "W: ", "Get:", "Unpacking ", "Setting up ")


def build(
    recipe: str, name: str | None = None, force: bool = False, progress: Progress | None = None
) -> _store.StoredRoot:
    say = progress or (lambda _line: None)
    source = load_recipe(find_recipe(recipe))
    name = _store.check_name(name or source.name)
    if not force and (same := _store.unchanged(name, "recipe", {"sha256": source.sha256})):
        say(f"{name}: up to date (recipe {source.sha256[:12]}), nothing to do")
        return same
    debootstrap, private_mounts = _tools()
    started = time.monotonic()
    with _store.staging(name) as stage:
        _check_space(stage.directory, source)
        tree = stage.tree
        say(f"[1/4] debootstrap --variant=minbase {source.suite} from {source.mirror}")
        _run(
            [
                *private_mounts,
                debootstrap,
                "--variant=minbase",
                f"--keyring={KEYRING}",
                f"--components={','.join(source.components)}",
                source.suite,
                tree,
                source.mirror,
            ],
            "debootstrap",
            stage.directory,
            source,
            say,
            started,
        )
        if source.packages or source.security_mirror:
            upgrade = ""
            if source.security_mirror:  # verified by the new root's own debian-archive-keyring
                upgrade = "upgrade"
                entry = f"deb {source.security_mirror} {source.suite}-security {' '.join(source.components)}\n"
                _write_files(tree, (("etc/apt/sources.list.d/nsbox-security.list", entry),))
                say(f"[2/4] apt-get upgrade from {source.security_mirror} {source.suite}-security")
            if source.packages:
                say(f"[2/4] apt-get install {' '.join(source.packages)}")
            _run(
                [*private_mounts, "sh", "-c", _CHROOT_APT, "sh", tree, upgrade, *source.packages],
                "apt-get",
                stage.directory,
                source,
                say,
                started,
            )
        say("[3/4] the recipe's files; apt's caches dropped")
        _write_files(tree, (*_NOT_THE_BUILD_HOSTS, *source.files))
        for path in _DROPPED:
            _empty(tree, path)
        say("[4/4] setuid bits, file capabilities and device nodes stripped; manifest")
        root = stage.finish(started, {"kind": "recipe", "recipe": source.to_dict(), "description": source.description})
    made = root.manifest
    packages = made["packages"]
    say(
        f"built {name} in {made['build_seconds']:.0f} s: {made['size_bytes'] / 1e6:.0f} MB, {len(packages)} packages "
        f"(python3 {packages.get('python3', 'none')}) -> {root.path}"
    )
    return root


def _tools() -> tuple[str, list[str]]:
    """debootstrap's path, and the prefix that runs a command in a private mount namespace."""
    if os.geteuid() != 0:
        raise RootfsError(
            "building a root needs root (debootstrap installs packages as root)",
            "run `sudo nsbox rootfs build ...`: roots built by root in /var/lib/nsbox are usable by everyone; "
            "or `nsbox rootfs import IMAGE.tar NAME`, which an ordinary user can do",
        )
    if missing := missing_tools():
        raise RootfsError(
            f"{' and '.join(missing)} not found (on PATH; the keyring verifies the archive)", INSTALL_TOOLS
        )
    found = {tool: str(shutil.which(tool)) for tool in TOOLS}
    private = [found["unshare"], "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--"]
    return found["debootstrap"], private


def missing_tools() -> list[str]:
    """What a build needs and this host lacks (also for `nsbox check`)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return missing + ([] if os.path.isfile(KEYRING) else [KEYRING])


def _check_space(directory: str, recipe: Recipe) -> None:
    free = shutil.disk_usage(directory).free
    if free < recipe.space:
        raise RootfsError(
            f"no space for {recipe.name}: {free / 1e6:.0f} MB free in {directory}, the recipe needs about "
            f"{recipe.space / 1e6:.0f} MB (its `space`)",
            "free some space there, or set NSBOX_DATA_DIR to a folder on a larger filesystem",
        )


def _run(argv: list[str], what: str, directory: str, recipe: Recipe, say: Progress, started: float) -> None:
    """Runs one step, showing its progress lines; on failure its last lines and a remedy."""
    tail: deque[str] = deque(maxlen=25)
    last_shown = 0.0
    with subprocess.Popen(  # nosec B603  # fixed tools, validated recipe values, no shell
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_ENV,
        text=True,
        errors="replace",
    ) as process:
        try:
            for line in _lines(process.stdout or ()):
                tail.append(line)
                now = time.monotonic()
                # A line per package at most every 2 s: progress, not hundreds of lines.
                if line.startswith(_SHOWN) and (not line.startswith(_PER_PACKAGE) or now - last_shown > 2):
                    say(f"  {now - started:5.0f}s  {line}")
                    last_shown = now
            code = process.wait()
        except BaseException:  # Ctrl-C, or our caller's exception: nothing may go on writing
            process.kill()  # unshare: --kill-child takes its pid namespace, every process of the step
            process.wait()
            raise
    if code == 0:
        return
    output = "\n".join(f"    {line}" for line in tail)
    if "No space left on device" in output or shutil.disk_usage(directory).free < 16 << 20:
        raise RootfsError(
            f"{what} ran out of space in {directory} ({shutil.disk_usage(directory).free / 1e6:.0f} MB free):\n"
            + output,
            f"the recipe {recipe.name} needs about {recipe.space / 1e6:.0f} MB; free some, or set NSBOX_DATA_DIR "
            "to a folder on a larger filesystem",
        )
    raise RootfsError(
        f"{what} failed (exit code {code}); its last lines:\n{output}",
        f"check that {recipe.mirror} is reachable and serves {recipe.suite}, and the recipe's package names",
    )


def _lines(stream: Iterable[str]) -> Iterable[str]:
    for line in stream:
        line = line.rstrip()
        if line:
            yield line


def _write_files(tree: str, files: tuple[tuple[str, str], ...]) -> None:
    """The recipe's files, written without following a symlink of the new root."""
    root_fd = os.open(tree, DIR_FLAGS)
    try:
        for path, content in files:
            parts = path.split("/")
            try:
                parent = open_parent(root_fd, parts[:-1])
            except Refused as exc:
                raise RootfsError(f"the recipe's file {path!r}: {exc} in the new root", "name the real path") from None
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(parts[-1], dir_fd=parent)
                fd = os.open(parts[-1], NEW_FILE, 0o644, dir_fd=parent)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(content)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)


def _empty(tree: str, path: str) -> None:
    """Removes what is in ``tree/path`` (or the file itself), keeping a folder. Every
    component is opened from the tree's fd with O_NOFOLLOW (open_parent): a symlink anywhere
    on the path (``var -> /var`` made by a maintainer script) stops it, and nothing is removed."""
    *parts, name = path.split("/")
    root_fd = os.open(tree, DIR_FLAGS)
    try:
        try:
            parent = open_parent(root_fd, parts, create=False)
        except (FileNotFoundError, Refused):  # not there, or not a folder of the tree
            return
    finally:
        os.close(root_fd)
    try:
        try:
            folder = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW: ENOTDIR for a link too
                raise
            if not stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=parent)  # a file: removed; a symlink: left, never followed
            return
        try:
            with os.scandir(folder) as listing:
                entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
            for entry, is_dir in entries:
                if is_dir:
                    shutil.rmtree(entry, dir_fd=folder)  # fd-based: follows no symlink below
                else:
                    os.unlink(entry, dir_fd=folder)
        finally:
            os.close(folder)
    finally:
        os.close(parent)
