"""The host-side file API of a session, attacked by a sandbox that plants and swaps symlinks.

``write_file``, ``read_file``, ``list_files``, ``remove``, ``upload`` and ``download`` act on
the sandbox's /workspace from the host, and everything they meet there was made by the
payload: untrusted. The attacks: paths that leave the workspace (``..``, absolute paths,
``/proc/self/root``), symlinks planted inside (to /etc, to /, to the sandbox's /tmp, to a
host canary, to a writable bind that stands for "outside", even one pointing inside), a
symlink swapped in thousands of times per second while the host's calls run, a FIFO, files
over the 64 MiB cap (also one that grows while it is read), and option injection into
``install_packages``. Each must be refused (``SecurityError``; a size over the cap:
``SpecError`` naming the size), nothing outside the workspace may be read or written
(canaries keep their content, inode and mtime; no file appears beside them), and the
session must stay usable afterwards.

Safety: these tests run as root on a shared machine, so a destructive call (write, remove,
upload) only ever aims at canaries made here, or at the host's /etc/passwd with its own
bytes and mode (and the file is restored if the call got through anyway); nothing removes
recursively through a link to / or /tmp.

Each race has its premise (``test_premise_*``): in the same setup, a host-side
check-then-use through ``/proc/PID/root`` (lstat every directory on the way, then open with
O_NOFOLLOW; or lstat each entry, then descend into it by name) IS redirected into the
outside directory, so the race tests can fail.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import re
import shlex
import stat
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nsbox
from nsbox import SecurityError, SpecError, _linux
from tests.conftest import call_within, expect_refusal, fingerprint, restoring, session, sh

MiB = 1 << 20
FILE_LIMIT = 64 * MiB
#: What a refusal of a malformed path may be: an escape (SecurityError) or bad input
#: (ValueError, which SpecError is). Never success, never an OSError of a half-done call.
MALFORMED = (SecurityError, ValueError)
#: An error message that names the size: the limit (64 MiB) or the file's own size.
SIZE_WORDS = re.compile(r"\b(64|65|900)(\.0+)? ?(MiB|MB|M)\b|67108864|67108865|68157440|943718400")
PASSWD = Path("/etc/passwd")


# --- helpers ------------------------------------------------------------------------------
def assert_usable(sandbox: nsbox.NsSandbox) -> None:
    """The session survived everything refused before: runs and the file API still work."""
    assert sh(sandbox, "echo alive") == b"alive\n"
    sandbox.write_file("usable.txt", b"still usable")
    assert sandbox.read_file("usable.txt") == b"still usable"
    sandbox.remove("usable.txt")
    assert sh(sandbox, "test ! -e /workspace/usable.txt && echo gone") == b"gone\n"


def host_pid_of(token: str) -> int:
    """The host pid of the sandbox's python3 process whose argv carries ``token``."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if cmdline.startswith(b"python3\0") and token.encode() in cmdline:
                    return int(entry)
    raise AssertionError(f"no process with {token} in its argv")


def start_python_bg(sandbox: nsbox.NsSandbox, code: str, *args: str, ready: str) -> None:
    """Starts ``python3 -c code args`` in the background of a run (it lives on in the
    session) and returns once it has created /workspace/READY."""
    result = sandbox.run(["sh", "-c", 'python3 -c "$0" "$@" >>/workspace/.bg.log 2>&1 &', code, *args], timeout=10)
    assert result.status == nsbox.Status.OK, result
    waited = sandbox.run(["sh", "-c", f"while [ ! -e /workspace/{ready} ]; do sleep 0.01; done"], timeout=15)
    assert waited.status == nsbox.Status.OK, (waited, sh(sandbox, "cat /workspace/.bg.log"))


# --- paths that leave the workspace --------------------------------------------------------
#: Aimed at files only read (the sandbox's and the host's /etc/passwd, the roots).
READ_ESCAPES = (
    "../../etc/passwd",
    "a/../../x",
    "a/../../etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "/workspace/../etc/passwd",
    "/workspace/a/../../etc/passwd",
    "/proc/self/root/etc/passwd",
    "/proc/1/root/etc/passwd",
    "/workspacex/f",
    "/workspace/../workspacex/f",
    "..",
    "../",
    "/",
    "/workspace/..",
    "/tmp",
)
#: Neither an escape nor a file: the workspace itself, or a path with a NUL byte.
MALFORMED_PATHS = ("", ".", "./", "/workspace", "/workspace/", "a/..", "\0", "a\0b", "keep.txt\0/../../etc/passwd")
NUL_PATHS = tuple(p for p in MALFORMED_PATHS if "\0" in p)


def destructive_escapes(canary: Path) -> tuple[str, ...]:
    """Paths that, followed as a broken implementation might (on the host, or from a
    workspace directory at any depth up to 12), land on ``canary``: a file made here."""
    relative = str(canary).lstrip("/")
    return (
        str(canary),
        "/proc/self/root" + str(canary),
        "../" * 12 + relative,
        "a/" + "../" * 13 + relative,
        "/workspace/" + "../" * 12 + relative,
    )


def test_paths_leaving_the_workspace_are_refused(host_tmp: Callable[..., Path]) -> None:
    hostdir, downloads, uploads = host_tmp("canary", 0o777), host_tmp("dl"), host_tmp("up")
    canary = hostdir / "canary"
    canary.write_bytes(b"HOST-CANARY\n")
    os.chmod(canary, 0o666)
    (uploads / "payload").write_bytes(b"UPLOADED\n")
    with session() as sandbox:
        sh(sandbox, "mkdir a && echo KEEP > keep.txt && echo A > a/f")
        inside_before = sh(sandbox, "ls -lAR --time-style=full-iso /workspace; sha256sum /etc/passwd")
        host_before = {p: fingerprint(p) for p in (hostdir, canary, PASSWD, downloads)}
        failures: list[str] = []
        with restoring(canary):
            for path in READ_ESCAPES:
                expect_refusal(failures, f"read_file({path!r})", functools.partial(sandbox.read_file, path))
                expect_refusal(failures, f"list_files({path!r})", functools.partial(sandbox.list_files, path))
                expect_refusal(
                    failures,
                    f"download({path!r})",
                    functools.partial(sandbox.download, path, str(downloads / "out")),
                )
            for path in destructive_escapes(canary):
                expect_refusal(failures, f"read_file({path!r})", functools.partial(sandbox.read_file, path))
                expect_refusal(failures, f"write_file({path!r})", functools.partial(sandbox.write_file, path, b"PWN"))
                expect_refusal(failures, f"remove({path!r})", functools.partial(sandbox.remove, path))
                expect_refusal(
                    failures, f"upload(.., {path!r})", functools.partial(sandbox.upload, str(uploads / "payload"), path)
                )
                expect_refusal(
                    failures, f"download({path!r})", functools.partial(sandbox.download, path, str(downloads / "out"))
                )
            # a parent directory created on the way must not be created outside either
            expect_refusal(
                failures,
                "write_file(new parents outside)",
                functools.partial(sandbox.write_file, str(hostdir / "new" / "x"), b"PWN"),
            )
            expect_refusal(
                failures,
                "remove(host dir, recursive)",
                functools.partial(sandbox.remove, "../" * 12 + str(hostdir).lstrip("/"), recursive=True),
            )
            host_after = {p: fingerprint(p) for p in (hostdir, canary, PASSWD, downloads)}
        assert failures == [], "\n".join(failures)
        assert host_after == host_before
        assert sh(sandbox, "ls -lAR --time-style=full-iso /workspace; sha256sum /etc/passwd") == inside_before
        assert_usable(sandbox)


def test_malformed_paths_are_refused(host_tmp: Callable[..., Path]) -> None:
    """The workspace itself is no file (nor something to remove), and a NUL byte would cut
    a path short in C: both are refused before anything is done."""
    downloads, uploads = host_tmp("dl"), host_tmp("up")
    (uploads / "payload").write_bytes(b"UPLOADED\n")
    with session() as sandbox:
        sh(sandbox, "mkdir a && echo KEEP > keep.txt && echo A > a/f")
        inside_before = sh(sandbox, "ls -lAR --time-style=full-iso /workspace")
        listing = [(f.name, f.type) for f in sandbox.list_files()]
        assert listing == [("a", "dir"), ("keep.txt", "file")]
        failures: list[str] = []
        for path in MALFORMED_PATHS:
            expect_refusal(failures, f"read_file({path!r})", functools.partial(sandbox.read_file, path), MALFORMED)
            expect_refusal(
                failures, f"write_file({path!r})", functools.partial(sandbox.write_file, path, b"PWN"), MALFORMED
            )
            expect_refusal(failures, f"remove({path!r})", functools.partial(sandbox.remove, path), MALFORMED)
            expect_refusal(
                failures,
                f"remove({path!r}, recursive=True)",
                functools.partial(sandbox.remove, path, recursive=True),
                MALFORMED,
            )
            expect_refusal(
                failures,
                f"upload(.., {path!r})",
                functools.partial(sandbox.upload, str(uploads / "payload"), path),
                MALFORMED,
            )
            expect_refusal(
                failures,
                f"download({path!r})",
                functools.partial(sandbox.download, path, str(downloads / "out")),
                MALFORMED,
            )
        for path in NUL_PATHS:
            expect_refusal(failures, f"list_files({path!r})", functools.partial(sandbox.list_files, path), MALFORMED)
        for path in (".", "./", "/workspace", "/workspace/"):
            try:
                names = [(f.name, f.type) for f in sandbox.list_files(path)]
            except Exception as exc:
                failures.append(f"list_files({path!r}) (the workspace itself): raised {type(exc).__name__}: {exc}")
            else:
                if names != listing:
                    failures.append(f"list_files({path!r}): {names} != {listing}")
        assert failures == [], "\n".join(failures)
        assert os.listdir(downloads) == []
        assert sh(sandbox, "ls -lAR --time-style=full-iso /workspace") == inside_before
        assert_usable(sandbox)


# --- symlinks planted by the sandbox ---------------------------------------------------------
@dataclass
class Planted:
    """The scene of the planted-symlink attacks."""

    hostdir: Path  # host only (not bound): its canary is reached only by resolving on the host
    outside: Path  # bound writable at /outside: reached by resolving inside the sandbox
    downloads: Path
    uploads: Path
    token: str

    @property
    def links(self) -> dict[str, str]:
        return {
            "p": "/etc/passwd",
            "root": "/",
            "d": "/tmp",
            "hc": f"{self.hostdir}/canary",
            "hd": str(self.hostdir),
            "oc": "/outside/canary",
            "od": "/outside",
            "inner": "realdir",  # points inside: refused all the same (ANY symlink)
            "m": "/proc/self/root",  # a magic link on the way
            "loop": "loop",
        }

    @property
    def tmp_canary(self) -> str:
        """A file in the sandbox's /tmp; no file of that name exists in the host's /tmp."""
        return f"wsf-{self.token}"

    def host_state(self) -> dict[Path, tuple[Any, ...]]:
        paths = [self.hostdir, self.hostdir / "canary", self.outside, self.outside / "canary", PASSWD, self.downloads]
        return {p: fingerprint(p) for p in paths}


@pytest.fixture
def planted(host_tmp: Callable[..., Path]) -> Planted:
    scene = Planted(
        host_tmp("host", 0o777), host_tmp("outside", 0o777), host_tmp("dl"), host_tmp("up"), uuid.uuid4().hex
    )
    for where, text in ((scene.hostdir, b"HOST-CANARY\n"), (scene.outside, b"OUTSIDE-CANARY\n")):
        (where / "canary").write_bytes(text)
        os.chmod(where / "canary", 0o666)  # so that even the sandbox's user could write it
    (scene.uploads / "payload").write_bytes(b"UPLOADED\n")
    (scene.uploads / "p").write_bytes(b"UPLOADED AS p\n")  # upload's default destination: p
    return scene


def plant(sandbox: nsbox.NsSandbox, scene: Planted) -> None:
    links = " && ".join(f"ln -s {shlex.quote(target)} {name}" for name, target in scene.links.items())
    sh(sandbox, f"mkdir realdir && echo REAL > realdir/f && {links} && echo TMP-CANARY > /tmp/{scene.tmp_canary}")


def inside_targets(sandbox: nsbox.NsSandbox, scene: Planted) -> bytes:
    """What the planted links point at, seen from inside (and the real directory)."""
    return sh(
        sandbox,
        "ls -lAR --time-style=full-iso /tmp /outside /workspace/realdir; "
        f"cat /tmp/{scene.tmp_canary} realdir/f /outside/canary; sha256sum /etc/passwd",
    )


def inside_state(sandbox: nsbox.NsSandbox, scene: Planted) -> bytes:
    links = " ".join(scene.links)
    listing = sh(sandbox, f'for l in {links}; do echo "$l -> $(readlink $l)"; done; ls -lA --time-style=full-iso')
    return listing + inside_targets(sandbox, scene)


def test_symlinks_planted_by_the_sandbox_are_refused(planted: Planted) -> None:
    scene = planted
    passwd = PASSWD.read_bytes()
    passwd_mode = stat.S_IMODE(os.stat(PASSWD).st_mode)
    dl = str(scene.downloads / "out")
    payload = str(scene.uploads / "payload")
    with session(mounts=(nsbox.Mount(str(scene.outside), "/outside", writable=True),)) as sandbox:
        plant(sandbox, scene)
        types = {f.name: f.type for f in sandbox.list_files()}
        assert types == {**dict.fromkeys(scene.links, "symlink"), "realdir": "dir"}, types
        assert [f.name for f in sandbox.list_files("realdir")] == ["f"]
        assert sandbox.read_file("realdir/f") == b"REAL\n"
        inside_before, host_before = inside_state(sandbox, scene), scene.host_state()

        reads = ["p", "root/etc/passwd", f"d/{scene.tmp_canary}", "hc", "hd/canary", "oc", "od/canary", "inner/f"]
        reads += ["m/etc/passwd", f"m{scene.hostdir}/canary", "loop", "loop/x", "/workspace/p", "/workspace/inner/f"]
        lists = ["root", "root/etc", "d", "hd", "od", "inner", "m", "m/etc", "loop", "/workspace/root"]
        writes = [f"d/{scene.tmp_canary}", "d/newdir/x", "hc", "hd/canary", "hd/new", "hd/newdir/x", "oc"]
        writes += ["od/canary", "od/new", "inner/f", "inner/new", "inner/newdir/x", f"m{scene.hostdir}/canary", "loop"]
        removes = [f"d/{scene.tmp_canary}", "hd/canary", "od/canary", "inner/f", "loop/x", "root/outside/canary"]
        failures: list[str] = []
        with restoring(PASSWD), restoring(scene.hostdir / "canary"), restoring(scene.outside / "canary"):
            for path in reads:
                expect_refusal(failures, f"read_file({path!r})", functools.partial(sandbox.read_file, path))
                expect_refusal(failures, f"download({path!r})", functools.partial(sandbox.download, path, dl))
            for path in lists:
                expect_refusal(failures, f"list_files({path!r})", functools.partial(sandbox.list_files, path))
            for path in writes:
                expect_refusal(failures, f"write_file({path!r})", functools.partial(sandbox.write_file, path, b"PWN"))
                expect_refusal(failures, f"upload(.., {path!r})", functools.partial(sandbox.upload, payload, path))
            # the host's /etc/passwd, written with its own bytes and mode: harmless if it got through
            for path in ("p", "root/etc/passwd", "m/etc/passwd"):
                expect_refusal(
                    failures,
                    f"write_file({path!r})",
                    functools.partial(sandbox.write_file, path, passwd, mode=passwd_mode),
                )
            expect_refusal(
                failures, "upload(p) (default destination)", functools.partial(sandbox.upload, str(scene.uploads / "p"))
            )
            for path in removes:
                expect_refusal(failures, f"remove({path!r})", functools.partial(sandbox.remove, path))
            for path in ("hd/canary", "od/canary", "inner/f", "hd/nothing"):
                expect_refusal(
                    failures,
                    f"remove({path!r}, recursive=True)",
                    functools.partial(sandbox.remove, path, recursive=True),
                )
            host_after = scene.host_state()
        assert failures == [], "\n".join(failures)
        assert host_after == host_before
        assert not os.path.lexists(f"/tmp/{scene.tmp_canary}")
        assert not os.path.lexists("/tmp/newdir/x")
        assert inside_state(sandbox, scene) == inside_before
        assert_usable(sandbox)


def test_removing_a_planted_link_never_touches_its_target(planted: Planted) -> None:
    """remove() of the link itself (the last component, also with a trailing slash, also
    recursive) either is refused (SecurityError: the contract's "any symlink in the path")
    or removes just the link, as unlinkat does: its target keeps every byte and entry."""
    scene = planted
    names = ["p", "root", "d", "hc", "hd", "oc", "inner", "m", "loop"]
    names += [] if os.path.lexists("/outside") else ["od"]  # od, resolved on the host, is the host's /outside
    #: never recursive through root, d or m: a bug there would be the host's / or /tmp
    safe_recursive = {"hc", "hd", "oc", "od", "inner", "loop"}
    with session(mounts=(nsbox.Mount(str(scene.outside), "/outside", writable=True),)) as sandbox:
        plant(sandbox, scene)
        targets_before, host_before = inside_targets(sandbox, scene), scene.host_state()
        failures: list[str] = []
        outcomes: dict[str, str] = {}
        with restoring(scene.hostdir / "canary"), restoring(scene.outside / "canary"):
            for name in names:
                for path, recursive in ((name, False), (name + "/", False), (name, True), (name + "/", True)):
                    if recursive and name not in safe_recursive:
                        continue
                    target = shlex.quote(scene.links[name])
                    sh(sandbox, f"rm -f {name} && ln -s {target} {name}")
                    label = f"remove({path!r}, recursive={recursive})"
                    try:
                        sandbox.remove(path, recursive=recursive)
                        outcome = "removed"
                    except SecurityError:
                        outcome = "refused"
                    except Exception as exc:
                        failures.append(f"{label}: raised {type(exc).__name__}: {exc}")
                        continue
                    outcomes[label] = outcome
                    still = sh(sandbox, f"test -L {name} && echo link || echo gone").strip().decode()
                    if (outcome, still) not in (("removed", "gone"), ("refused", "link")):
                        failures.append(f"{label}: {outcome}, and the link is {still}")
            host_after = scene.host_state()
        assert failures == [], "\n".join(failures)
        assert host_after == host_before
        assert inside_targets(sandbox, scene) == targets_before
        print(outcomes)  # (shown with -s: which of the two behaviours the implementation has)
        assert_usable(sandbox)


# --- a symlink swapped in while the call runs -----------------------------------------------
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
mode, seconds = sys.argv[2], float(sys.argv[3])  # argv[1]: a token, to find this process
os.chdir("/workspace")
alts = [b".alt-rel"] + ([b".alt-abs"] if mode == "both" else [])
def exchange(alt):
    if libc.renameat2(AT_FDCWD, b"swap", AT_FDCWD, alt, RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
swaps, started = 0, time.monotonic()
open(".swapping", "w").close()
while time.monotonic() < started + seconds and not os.path.exists(".stop"):
    for _ in range(100):
        for alt in alts:
            exchange(alt)  # swap: the symlink
            exchange(alt)  # swap: the real directory again
    swaps += 200 * len(alts)
    time.sleep(0.0002)
with open(".swaps", "w") as f:
    f.write(f"{swaps} {time.monotonic() - started}")
"""


@dataclass
class Race:
    sandbox: nsbox.NsSandbox
    outside: Path  # the host directory bound writable at /outside
    pid: int  # host pid of the swapper

    def stop(self) -> tuple[int, float]:
        """Stops the swapper; returns (swaps, seconds). It must have run until now."""
        assert os.path.exists(f"/proc/{self.pid}"), sh(self.sandbox, "cat /workspace/.bg.log")
        sh(self.sandbox, "touch .stop; while [ ! -e .swaps ]; do sleep 0.01; done", timeout=15)
        swaps, seconds = sh(self.sandbox, "cat .swaps").split()
        return int(swaps), float(seconds)


@contextlib.contextmanager
def background_race(
    host_tmp: Callable[..., Path], script: str, *args: str, ready: str, setup: str | None = None
) -> Iterator[Race]:
    """A session with /outside (a writable bind of a host directory holding the canaries
    ``f`` and ``canary``, writable by anyone), ``script`` running in its background until
    the race ends (it stops when /workspace/.stop appears)."""
    outside = host_tmp("outside", 0o777)
    for name, text in (("f", b"OUTSIDE-CANARY-F\n"), ("canary", b"OUTSIDE-CANARY\n")):
        (outside / name).write_bytes(text)
        os.chmod(outside / name, 0o666)
    token = uuid.uuid4().hex
    with session(mounts=(nsbox.Mount(str(outside), "/outside", writable=True),)) as sandbox:
        if setup is not None:
            sh(sandbox, setup)
        start_python_bg(sandbox, script, token, *args, ready=ready)
        race = Race(sandbox, outside, host_pid_of(token))
        try:
            yield race
        finally:
            with contextlib.suppress(Exception):
                sh(sandbox, "touch .stop")


@contextlib.contextmanager
def racing(host_tmp: Callable[..., Path], mode: str) -> Iterator[Race]:
    """/workspace/swap is exchanged (renameat2 RENAME_EXCHANGE) between a real directory
    and a symlink to /outside: ``../outside`` (mode "rel"), or that and ``/outside``
    ("both"). /outside is a writable bind of a host directory holding the canaries
    ``f`` and ``canary`` (writable by anyone: the sandbox's user too)."""
    setup = "mkdir swap && echo INSIDE > swap/f && ln -s ../outside .alt-rel && ln -s /outside .alt-abs"
    with background_race(host_tmp, SWAPPER, mode, "300", ready=".swapping", setup=setup) as race:
        yield race


def test_premise_a_check_then_open_is_redirected_by_the_swap(host_tmp: Callable[..., Path]) -> None:
    """Through /proc/PID/root, lstat each directory on the way (no symlink), then open
    the file with O_NOFOLLOW: the swap lands between the check and the open, and the host
    writes into, and reads from, the outside directory. The host acts as the payload's ids,
    as the file API does (as root, /outside is an idmapped bind: root itself has no id in it
    to create a file as)."""
    with racing(host_tmp, "rel") as race:
        base = f"/proc/{race.pid}/root/workspace"
        assert os.path.isdir(base + "/swap") or os.path.islink(base + "/swap")
        payload = os.stat(base)  # the workspace is the payload's
        as_payload = (  # an ordinary user's binds are plain: it writes as itself
            functools.partial(_linux.filesystem_ids, payload.st_uid, payload.st_gid)
            if os.geteuid() == 0
            else contextlib.nullcontext
        )
        writes = reads = tries = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (writes and reads):
            tries += 1
            swap = base + "/swap"
            with contextlib.suppress(OSError), as_payload():
                if not os.path.islink(swap) and os.path.isdir(swap):  # the check ...
                    fd = os.open(
                        swap + "/w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644
                    )  # ... the use
                    os.write(fd, b"naive\n")
                    os.close(fd)
            if (race.outside / "w").exists():
                writes += 1
                (race.outside / "w").unlink()
            with contextlib.suppress(OSError):
                if not os.path.islink(swap) and os.path.isdir(swap):
                    fd = os.open(swap + "/f", os.O_RDONLY | os.O_NOFOLLOW)
                    reads += os.read(fd, 100) == b"OUTSIDE-CANARY-F\n"
                    os.close(fd)
        swaps, seconds = race.stop()
        assert writes >= 1 and reads >= 1, (writes, reads, tries)
        assert swaps / seconds >= 1000, (swaps, seconds)
        assert_usable(race.sandbox)


def test_a_symlink_swapped_in_during_the_call_is_refused(host_tmp: Callable[..., Path]) -> None:
    with racing(host_tmp, "both") as race:
        sandbox, outside = race.sandbox, race.outside
        before = {p.name: fingerprint(p) for p in (outside, outside / "f", outside / "canary")}
        allowed = (SecurityError, FileNotFoundError)
        counts: dict[str, int] = {}
        failures: list[str] = []
        downloaded = outside.parent / f"{outside.name}-dl"  # beside it, not in it

        def attempt(label: str, call: Callable[[], Any], check: Callable[[Any], bool] = lambda _: True) -> None:
            try:
                value = call()
            except allowed as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
                return
            except Exception as exc:
                failures.append(f"{label}: raised {type(exc).__name__}: {exc}")
                return
            counts["ok"] = counts.get("ok", 0) + 1
            if not check(value):
                failures.append(f"{label}: returned {value!r:.200}")

        try:
            for i in range(300):
                attempt("write_file(swap/f)", functools.partial(sandbox.write_file, "swap/f", f"inside-{i}\n"))
                attempt(
                    "read_file(swap/f)",
                    functools.partial(sandbox.read_file, "swap/f"),
                    lambda data: data.startswith((b"inside-", b"INSIDE")),
                )
                if i % 3 == 0:
                    attempt("write_file(swap/nN)", functools.partial(sandbox.write_file, f"swap/n{i % 5}", b"new\n"))
                    attempt(
                        "list_files(swap)",
                        functools.partial(sandbox.list_files, "swap"),
                        lambda infos: "canary" not in {f.name for f in infos},
                    )
                    attempt("remove(swap/canary)", functools.partial(sandbox.remove, "swap/canary"), lambda _: False)
                    attempt(
                        "download(swap/f)",
                        functools.partial(sandbox.download, "swap/f", str(downloaded)),
                        lambda _: downloaded.read_bytes().startswith((b"inside-", b"INSIDE")),
                    )
            swaps, seconds = race.stop()
        finally:
            with contextlib.suppress(FileNotFoundError):
                downloaded.unlink()
        after = {p.name: fingerprint(p) for p in (outside, outside / "f", outside / "canary")}
        assert failures == [], "\n".join(failures[:40])
        assert after == before, "something outside was written"
        assert sorted(os.listdir(outside)) == ["canary", "f"]
        assert swaps / seconds >= 1000, (swaps, seconds)
        # the race was live and the test discriminates: some calls got through, some were refused
        assert counts.get("ok", 0) >= 10 and counts.get("SecurityError", 0) >= 10, counts
        assert sorted(f.name for f in sandbox.list_files("swap")) == ["f", "n0", "n1", "n2", "n3", "n4"]
        assert sandbox.read_file("swap/f").startswith(b"inside-")
        assert_usable(sandbox)


GARDENER = r"""
import contextlib, ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
os.chdir("/workspace")
def grow():
    # only ever creates through directories it has just made itself: never through a link
    with contextlib.suppress(FileExistsError):
        os.mkdir("victim")
    try:
        os.mkdir("victim/sub")
    except FileExistsError:
        pass
    else:
        with contextlib.suppress(OSError):
            os.mkdir("victim/sub/deeper")
            open("victim/sub/deeper/keep", "w").close()
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.symlink("../../outside", "victim/.alt")  # from /workspace/victim: /outside
swaps, started = 0, time.monotonic()
open(".gardening", "w").close()
while time.monotonic() < started + 300 and not os.path.exists(".stop"):
    with contextlib.suppress(OSError):
        grow()
    for _ in range(100):
        libc.renameat2(AT_FDCWD, b"victim/sub", AT_FDCWD, b"victim/.alt", RENAME_EXCHANGE)
        libc.renameat2(AT_FDCWD, b"victim/sub", AT_FDCWD, b"victim/.alt", RENAME_EXCHANGE)
    swaps += 200
    time.sleep(0.0002)
with open(".swaps", "w") as f:
    f.write(f"{swaps} {time.monotonic() - started}")
"""


@contextlib.contextmanager
def gardening(host_tmp: Callable[..., Path]) -> Iterator[Race]:
    """/workspace/victim/sub (a tree) is exchanged with victim/.alt (``../../outside``)
    thousands of times per second, and regrown whenever it was removed."""
    with background_race(host_tmp, GARDENER, ready=".gardening") as race:
        yield race


def naive_rmtree(path: str) -> None:
    """rm -r by path, checking each entry with lstat before descending into it."""
    for name in os.listdir(path):
        child = os.path.join(path, name)
        if os.path.islink(child) or not os.path.isdir(child):  # the check ...
            os.unlink(child)
        else:
            naive_rmtree(child)  # ... the use: by name again, the link swapped in is followed
            os.rmdir(child)


def test_premise_a_checking_recursive_remove_is_redirected(host_tmp: Callable[..., Path]) -> None:
    with gardening(host_tmp) as race:
        victim = f"/proc/{race.pid}/root/workspace/victim"
        redirected = tries = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not redirected:
            tries += 1
            with contextlib.suppress(OSError):
                naive_rmtree(victim)
            if sorted(os.listdir(race.outside)) != ["canary", "f"]:
                redirected += 1
        swaps, seconds = race.stop()
        assert redirected, (tries, swaps, seconds)
        assert_usable(race.sandbox)


def test_a_tree_removed_while_links_are_swapped_in_stays_inside(host_tmp: Callable[..., Path]) -> None:
    with gardening(host_tmp) as race:
        sandbox, outside = race.sandbox, race.outside
        before = {p.name: fingerprint(p) for p in (outside, outside / "f", outside / "canary")}
        counts: dict[str, int] = {}
        failures: list[str] = []
        for i in range(300):
            path = ("victim", "victim/sub", "victim/.alt")[i % 3]
            try:
                sandbox.remove(path, recursive=True)
                counts["ok"] = counts.get("ok", 0) + 1
            except (SecurityError, OSError) as exc:  # refused; or gone, or regrown (ENOTEMPTY) meanwhile
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
            except Exception as exc:
                failures.append(f"remove({path!r}, recursive=True): raised {type(exc).__name__}: {exc}")
        swaps, seconds = race.stop()
        after = {p.name: fingerprint(p) for p in (outside, outside / "f", outside / "canary")}
        assert failures == [], "\n".join(failures[:40])
        assert after == before, "something outside was removed or written"
        assert swaps / seconds >= 1000, (swaps, seconds)
        assert counts.get("ok", 0) >= 10, counts
        assert_usable(sandbox)


# --- files that are no regular files, and sizes ---------------------------------------------
def test_a_fifo_is_refused_without_hanging(host_tmp: Callable[..., Path]) -> None:
    downloads, uploads = host_tmp("dl"), host_tmp("up")
    (uploads / "payload").write_bytes(b"UPLOADED\n")
    with session() as sandbox:
        sh(sandbox, "mkfifo fifo")
        assert [(f.name, f.type) for f in sandbox.list_files()] == [("fifo", "other")]

        def unblock() -> None:  # a reader and a writer at once, so a blocked open returns
            call_within(lambda: sandbox.run(["sh", "-c", "exec 3<>/workspace/fifo; sleep 1"], timeout=10), 15)

        for label, call in (
            ("read_file", functools.partial(sandbox.read_file, "fifo")),
            ("download", functools.partial(sandbox.download, "fifo", str(downloads / "out"))),
        ):
            started = time.monotonic()
            thread, value, error = call_within(call, 10)
            if thread.is_alive():
                unblock()
                pytest.fail(f"{label} of a FIFO hangs")
            assert isinstance(error, SecurityError), (label, value, error)
            assert time.monotonic() - started < 5, label
        assert os.listdir(downloads) == []
        # writing to (or over) a FIFO must not hang either; refusing it or replacing it are both fine
        for label, call in (
            ("write_file", functools.partial(sandbox.write_file, "fifo", b"x")),
            ("upload", functools.partial(sandbox.upload, str(uploads / "payload"), "fifo")),
        ):
            thread, value, error = call_within(call, 10)
            if thread.is_alive():
                unblock()
                pytest.fail(f"{label} to a FIFO hangs")
            assert error is None or isinstance(error, (SecurityError, OSError)), (label, error)
        assert_usable(sandbox)


def test_files_over_the_size_cap_are_refused_quickly(host_tmp: Callable[..., Path]) -> None:
    downloads, uploads = host_tmp("dl"), host_tmp("up", 0o755)
    with (uploads / "big").open("wb") as f:
        f.truncate(FILE_LIMIT + 1)
    with session() as sandbox:
        sh(sandbox, f"truncate -s {FILE_LIMIT + 1} over && truncate -s 65M big65 && truncate -s 900M huge")
        sh(sandbox, f"truncate -s {FILE_LIMIT} exact")
        for path in ("over", "big65", "huge"):
            for label, call in (
                (f"read_file({path})", functools.partial(sandbox.read_file, path)),
                (f"download({path})", functools.partial(sandbox.download, path, str(downloads / path))),
            ):
                started = time.monotonic()
                with pytest.raises(SpecError) as info:
                    call()
                assert time.monotonic() - started < 5, label
                assert SIZE_WORDS.search(str(info.value)), (label, str(info.value))
        assert os.listdir(downloads) == []
        # at the cap exactly: fine
        assert sandbox.read_file("exact") == bytes(FILE_LIMIT)
        sandbox.remove("exact")
        with pytest.raises(SpecError) as info:
            sandbox.write_file("written", bytes(FILE_LIMIT + 1))
        assert SIZE_WORDS.search(str(info.value)), str(info.value)
        with pytest.raises(SpecError) as info:
            sandbox.upload(str(uploads / "big"), "uploaded")
        assert SIZE_WORDS.search(str(info.value)), str(info.value)
        assert sh(sandbox, "ls") == b"big65\nhuge\nover\n"
        assert_usable(sandbox)


GROWER = r"""
import os, sys, time
started = time.monotonic()
open("/workspace/grow", "wb").close()
open("/workspace/.growing", "w").close()
while time.monotonic() < started + 300 and not os.path.exists("/workspace/.stop"):
    os.truncate("/workspace/grow", 16)
    os.truncate("/workspace/grow", 900 << 20)
"""


def test_a_file_growing_during_the_read_is_still_capped() -> None:
    """The size checked first is not the size read: a file that grows from 16 bytes to
    900 MiB between the two must still give at most 64 MiB (or be refused)."""
    with session() as sandbox:
        start_python_bg(sandbox, GROWER, uuid.uuid4().hex, ready=".growing")
        counts: dict[str, int] = {}
        started = time.monotonic()
        for _ in range(20):
            try:
                data = sandbox.read_file("grow")
            except (SpecError, SecurityError) as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
            else:
                assert len(data) <= FILE_LIMIT, len(data)
                counts["ok"] = counts.get("ok", 0) + 1
        assert time.monotonic() - started < 60, counts
        sh(sandbox, "touch .stop")
        assert_usable(sandbox)


# --- what the host writes belongs to the sandbox; what it reads is exact ----------------------
def test_written_files_belong_to_the_sandboxs_user() -> None:
    with session() as sandbox:
        sandbox.write_file("owned.txt", "text\n")
        sandbox.write_file("deep/er/f.bin", b"\x00\x01", mode=0o600)
        uid_gid = sh(sandbox, "echo $(id -u):$(id -g)").strip()
        owners = sh(sandbox, "stat -c '%n %u:%g %a' owned.txt deep deep/er deep/er/f.bin").decode().splitlines()
        assert [line.split()[1] for line in owners] == [uid_gid.decode()] * 4, owners
        assert owners[0].split()[2] == "644" and owners[3].split()[2] == "600", owners
        assert sandbox.read_file("owned.txt") == b"text\n"
        infos = {f.name: f for f in sandbox.list_files()}
        assert (infos["owned.txt"].type, infos["owned.txt"].size) == ("file", 5)
        assert infos["owned.txt"].mode & 0o777 == 0o644
        assert infos["deep"].type == "dir"
        # the sandbox can change and delete them
        sh(sandbox, "echo more >> owned.txt && chmod 600 owned.txt && rm owned.txt && rm -r deep")
        assert sandbox.run(["rm", "-r", "/workspace/deep"]).exit_code != 0  # gone already
        with pytest.raises(SpecError):
            sandbox.write_file("setuid", b"#!/bin/sh\n", mode=0o4755)
        sandbox.write_file("again.txt", b"x")
        assert sandbox.run(["rm", "/workspace/again.txt"]).status == nsbox.Status.OK
        with pytest.raises(FileNotFoundError):
            sandbox.read_file("again.txt")
        with pytest.raises(FileNotFoundError):
            sandbox.remove("again.txt")
        assert_usable(sandbox)


def test_download_and_upload_copy_exactly(host_tmp: Callable[..., Path]) -> None:
    downloads, uploads = host_tmp("dl"), host_tmp("up")
    content = bytes(range(256)) * 4096 + b"tail"
    (uploads / "up.bin").write_bytes(content)
    with session() as sandbox:
        digest = sh(
            sandbox,
            'python3 -c "import hashlib; d = bytes(range(256))[::-1] * 4099; '
            "open('blob', 'wb').write(d); print(hashlib.sha256(d).hexdigest())\"",
        ).strip()
        sandbox.download("blob", str(downloads / "blob"))
        assert hashlib.sha256((downloads / "blob").read_bytes()).hexdigest().encode() == digest
        assert hashlib.sha256(sandbox.read_file("blob")).hexdigest().encode() == digest
        sandbox.upload(str(uploads / "up.bin"))  # default destination: the basename
        sandbox.upload(str(uploads / "up.bin"), "sub/renamed.bin")
        expected = hashlib.sha256(content).hexdigest().encode()
        assert sh(sandbox, "sha256sum up.bin sub/renamed.bin | cut -d' ' -f1") == expected + b"\n" + expected + b"\n"
        # a symlink as the source is refused, and nothing is written on the host
        sh(sandbox, "ln -s blob bl && ln -s /etc/hostname hn")
        for source in ("bl", "hn"):
            with pytest.raises(SecurityError):
                sandbox.download(source, str(downloads / source))
        with pytest.raises(FileNotFoundError):
            sandbox.download("missing", str(downloads / "missing"))
        assert sorted(os.listdir(downloads)) == ["blob"]
        assert_usable(sandbox)


# --- install_packages -----------------------------------------------------------------------
def build_wheel(directory: Path) -> Path:
    """A pure-Python wheel made by hand: nsbox_demo_pkg 1.0, with VALUE = 42."""
    files = {
        "nsbox_demo_pkg/__init__.py": b"VALUE = 42\n",
        "nsbox_demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: nsbox_demo_pkg\nVersion: 1.0\n",
        "nsbox_demo_pkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: nsbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items())
    files["nsbox_demo_pkg-1.0.dist-info/RECORD"] = (record + "nsbox_demo_pkg-1.0.dist-info/RECORD,,\n").encode()
    wheel = directory / "nsbox_demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    os.chmod(wheel, 0o644)
    return wheel


INJECTIONS = (
    "--index-url=http://x",
    "--index-url",
    "-i",
    "a; rm -rf /",
    "a; touch /workspace/pwned",
    "$(touch /workspace/pwned)",
    "-r/etc/passwd",
    "--target=/tmp",
    "-e.",
    "/etc/passwd",
    "../x",
    ".",
    "",
    "nsbox_demo_pkg\n--index-url=http://x",
    "nsbox_demo_pkg --pre",
    "http://x/pkg.whl",
    "nsbox_demo_pkg\n-i",
)
#: Not injections by themselves (the name reaches pip as one argv element), but no package
#: names either: a validator anchored with ``$`` (which matches before a final newline) lets
#: them through.
# re.match's "$" also matches before a final newline: the names must match whole.
TRAILING_NEWLINES = ("nsbox_demo_pkg\n", "nsbox_demo_pkg==1.0\n", "nsbox_demo_pkg[x]\n")


def test_install_packages_from_the_wheels_directory(host_tmp: Callable[..., Path]) -> None:
    wheels = host_tmp("wheels", 0o755)  # read by the sandbox's user
    build_wheel(wheels)
    with session(wheels=str(wheels)) as sandbox:
        result = sandbox.install_packages(["nsbox_demo_pkg"])
        assert result.status == nsbox.Status.OK, result
        executed = sandbox.execute_code("import nsbox_demo_pkg; nsbox_demo_pkg.VALUE")
        assert executed.success, executed
        assert executed.value == "42"
        failures: list[str] = []
        for name in INJECTIONS + TRAILING_NEWLINES:
            expect_refusal(
                failures,
                f"install_packages([{name!r}])",
                functools.partial(sandbox.install_packages, [name]),
                SpecError,
            )
            expect_refusal(
                failures,
                f"install_packages(['nsbox_demo_pkg', {name!r}])",
                functools.partial(sandbox.install_packages, ["nsbox_demo_pkg", name]),
                SpecError,
            )
        assert failures == [], "\n".join(failures)
        assert sh(sandbox, "test ! -e /workspace/pwned && echo clean") == b"clean\n"
        assert_usable(sandbox)


def test_install_packages_needs_the_wheels_option() -> None:
    with session() as sandbox:
        with pytest.raises(SpecError, match="wheels"):
            sandbox.install_packages(["nsbox_demo_pkg"])
        assert sh(sandbox, "test ! -e /workspace/.packages/nsbox_demo_pkg && echo none") == b"none\n"
        assert_usable(sandbox)
