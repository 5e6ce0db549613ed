"""Host paths named by the caller of ``upload`` and ``download``, attacked through a shared folder.

A sandbox with a writable bind ``HOSTDIR:/workspace/shared`` controls what HOSTDIR holds. The
caller then names a path in it: ``download("result.txt", HOSTDIR + "/report.txt")`` to
collect a result, ``upload(HOSTDIR + "/data.csv")`` to feed one in. With a plain open() on
the host (issue 17, 2) the sandbox plants ``report.txt -> <any host file>`` and the caller
overwrites that file with its own rights (root's); plants ``data.csv -> <any host file>``
and the caller copies it into the sandbox; plants a FIFO and upload() blocks the caller.

What is required: host-side opens of caller-named paths refuse a symlink in ANY component
(``HOSTDIR/sub -> outside-dir`` too) and anything but a regular file, by default, with
``nsbox.SecurityError``, touching nothing (the canaries keep content, inode and mtime; no
file appears beside them, and a refused download leaves nothing new in HOSTDIR: no
temporary file either). ``download`` writes atomically: a temporary file in the destination
directory, then a rename, so a reader never sees a half-written file and an existing regular
destination is replaced (a hard link to it keeps its bytes). ``follow_symlinks=True`` on both
opts out of the symlink refusal, never out of the regular-file one.

Calls that could block (a FIFO) run in a thread with a bounded join; the old behaviour is
unblocked afterwards (the FIFO opened from the other end) so the thread ends and the suite
goes on. Symlinks are planted by the sandbox itself (``ln -s`` inside), as an attacker would.

Safety: every destructive call aims only at canaries made here, in temporary directories
(tmp* under /tmp) removed after the test, never at a system file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nsbox
from nsbox import SecurityError
from tests.conftest import call_within, expect_refusal, fingerprint, session, sh

RESULT = b"RESULT FROM THE SANDBOX\n"
CANARY = b"HOST-CANARY: must keep these bytes\n"
SECRET = b"HOST-SECRET: must never reach the sandbox\n"
BLOCKING = 10.0  # seconds a call may take before it counts as blocked


# --- helpers ------------------------------------------------------------------------------------
def data_of(path: Path) -> tuple[Any, ...] | None:
    """The fingerprint without the ctime (which a rename over another link of the inode
    changes, with the link count: the file's data and metadata are what must stay)."""
    found = fingerprint(path)
    return None if found is None else found[:3] + found[4:]


def tree(path: Path) -> dict[str, tuple[Any, ...] | None]:
    """Fingerprints of ``path`` and of every entry below it (links not followed)."""
    found = {".": fingerprint(path)}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root) / name
            found[str(full.relative_to(path))] = fingerprint(full)
    return found


def unblock_fifo(path: Path, thread: threading.Thread, writer_side: bool) -> None:
    """Ends a call blocked in open() of FIFO ``path`` by opening its other end (O_NONBLOCK:
    never blocking). As the writer: opened and closed at once (the call then reads EOF); as
    the reader: kept open until the call's thread has written and finished."""
    if writer_side:
        deadline = time.monotonic() + BLOCKING
        while True:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                break
            except OSError:  # ENXIO: no reader (yet)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        thread.join(BLOCKING)
        return
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        thread.join(BLOCKING)
    finally:
        os.close(fd)
    thread.join(BLOCKING)


def refused_promptly(
    failures: list[str], label: str, call: Callable[[], Any], fifo: Path | None = None, writer_side: bool = True
) -> None:
    """``call`` must raise SecurityError within BLOCKING seconds. If it blocks in an open of
    ``fifo``, the FIFO's other end is opened so that it returns, and a failure recorded."""
    started = time.monotonic()
    thread, value, error = call_within(call, BLOCKING)
    if thread.is_alive():
        if fifo is not None:
            unblock_fifo(fifo, thread, writer_side)
        failures.append(f"{label}: blocked the caller for more than {BLOCKING:.0f} s")
        return
    if not isinstance(error, SecurityError):
        said = f"raised {type(error).__name__}: {error}" if error is not None else f"succeeded ({value!r:.80})"
        failures.append(f"{label}: {said}; expected SecurityError")
    elif time.monotonic() - started > BLOCKING / 2:
        failures.append(f"{label}: took {time.monotonic() - started:.1f} s")


@dataclass
class Shared:
    """The scene: HOSTDIR (writable bind at /workspace/shared, writable by the payload's
    uid: our own temporary directory, 0777) and, outside any bind, the canary directory
    (``canary``: a file a download could overwrite, ``secret``: one an upload could leak)."""

    hostdir: Path
    outside: Path

    def state(self) -> dict[str, Any]:
        return {"outside": tree(self.outside), "hostdir": tree(self.hostdir)}


@pytest.fixture
def shared(host_tmp: Callable[..., Path]) -> Shared:
    scene = Shared(host_tmp("shared", 0o777), host_tmp("outside", 0o755))
    (scene.outside / "canary").write_bytes(CANARY)
    (scene.outside / "secret").write_bytes(SECRET)
    os.chmod(scene.outside / "secret", 0o600)
    return scene


@contextlib.contextmanager
def shared_session(scene: Shared) -> Iterator[nsbox.NsSandbox]:
    """A session with HOSTDIR at /workspace/shared; at the end, what the payload made there
    is opened to all, so that the test's cleanup can remove it (rootless: another uid's)."""
    with session(mounts=(nsbox.Mount(str(scene.hostdir), "/workspace/shared", writable=True),)) as sandbox:
        try:
            yield sandbox
        finally:
            with contextlib.suppress(Exception):
                sandbox.run(["sh", "-c", "chmod -R a+rwX /workspace/shared 2>/dev/null; true"], timeout=30)


def assert_nothing_leaked(sandbox: nsbox.NsSandbox) -> None:
    """No secret reached the workspace (a refused upload wrote nothing)."""
    found = sh(sandbox, "grep -rl 'HOST-SECRET' /workspace || true")
    assert found == b"", f"the host's secret reached the sandbox: {found.decode()}"


# --- download through a planted symlink ----------------------------------------------------------
def test_download_through_a_planted_symlink_is_refused(shared: Shared) -> None:
    """report.txt -> the host canary, fresh.txt -> a new file beside it, sub -> the canary's
    directory, inner.txt -> a file of HOSTDIR itself (ANY symlink is refused): no download
    may write through them, create anything, or leave a temporary file in HOSTDIR."""
    scene, out = shared, shared.outside
    with shared_session(scene) as sandbox:
        links = {
            "report.txt": out / "canary",
            "fresh.txt": out / "created-by-download",
            "sub": out,
            "inner.txt": "mine.txt",
        }
        planted = " && ".join(f"ln -s {shlex.quote(str(t))} shared/{n}" for n, t in links.items())
        sh(
            sandbox,
            f"printf %s {shlex.quote(RESULT.decode())} > result.txt && echo MINE > shared/mine.txt && {planted}",
        )
        before = scene.state()
        failures: list[str] = []
        for dest in ("report.txt", "fresh.txt", "sub/canary", "sub/created-by-download", "inner.txt", "sub/sub-new"):
            label = f"download('result.txt', HOSTDIR/{dest})"
            expect_refusal(failures, label, functools.partial(sandbox.download, "result.txt", scene.hostdir / dest))
            if (now := scene.state()) != before:
                failures.append(f"{label}: changed the host: {changes(before, now)}")
                before = now
        assert failures == [], "\n".join(failures)
        assert (out / "canary").read_bytes() == CANARY
        assert not os.path.lexists(out / "created-by-download")
        # the session and an ordinary download still work
        sandbox.download("result.txt", scene.hostdir / "plain.txt")
        assert (scene.hostdir / "plain.txt").read_bytes() == RESULT


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The entries that differ between two ``Shared.state()``s."""
    diff = []
    for side in before:
        for name in sorted(set(before[side]) | set(after[side])):
            if before[side].get(name) != after[side].get(name):
                diff.append(f"{side}/{name}: {before[side].get(name)} -> {after[side].get(name)}")
    return "; ".join(diff)


# --- upload through a planted symlink ------------------------------------------------------------
def test_upload_through_a_planted_symlink_is_refused(shared: Shared) -> None:
    """data.csv -> the host's secret (0600, root's when run as root), sub -> its directory,
    inner.csv -> a file of HOSTDIR: upload must refuse all, and copy nothing in."""
    scene, out = shared, shared.outside
    with shared_session(scene) as sandbox:
        sh(sandbox, "echo MINE > shared/mine.txt")
        sh(sandbox, f"ln -s {shlex.quote(str(out / 'secret'))} shared/data.csv")
        sh(sandbox, f"ln -s {shlex.quote(str(out))} shared/sub && ln -s mine.txt shared/inner.csv")
        listing = sh(sandbox, "ls -lA --time-style=full-iso /workspace")
        before = scene.state()
        failures: list[str] = []
        for source, dest in (
            ("data.csv", None),
            ("data.csv", "copied.csv"),
            ("sub/secret", None),
            ("sub/secret", "copied-secret"),
            ("inner.csv", "inner-copy.csv"),
        ):
            label = f"upload(HOSTDIR/{source}, {dest!r})"
            expect_refusal(failures, label, functools.partial(sandbox.upload, scene.hostdir / source, dest))
        assert failures == [], "\n".join(failures)
        assert_nothing_leaked(sandbox)
        assert sh(sandbox, "ls -lA --time-style=full-iso /workspace") == listing, "a refused upload wrote a file"
        assert scene.state() == before


# --- a symlink in a component swapped in during the calls ----------------------------------------
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
os.chdir("/workspace/shared")  # sub: a real directory, .alt: a symlink to the host's canary dir
swaps, started = 0, time.monotonic()
open("/workspace/.swapping", "w").close()
while time.monotonic() < started + 300 and not os.path.exists("/workspace/.stop"):
    for _ in range(100):
        for _ in range(2):
            if libc.renameat2(AT_FDCWD, b"sub", AT_FDCWD, b".alt", RENAME_EXCHANGE) != 0:
                raise OSError(ctypes.get_errno(), "renameat2")
    swaps += 200
    time.sleep(0.0002)
with open("/workspace/.swaps", "w") as f:
    f.write(f"{swaps} {time.monotonic() - started}")
"""


def test_a_directory_swapped_for_a_symlink_during_the_calls_is_never_followed(shared: Shared) -> None:
    """HOSTDIR/sub is exchanged thousands of times a second with a symlink to the canary's
    directory (which holds ``out.txt`` and ``in.txt`` too; the real one is 0777, so that the
    caller may write in it when rootless too). Downloads to HOSTDIR/sub/out.txt
    and uploads of HOSTDIR/sub/in.txt may succeed (then on the real directory) or be refused;
    a check-then-open of the path would sooner or later act in the canary's directory."""
    scene, out = shared, shared.outside
    (out / "out.txt").write_bytes(CANARY)
    (out / "in.txt").write_bytes(SECRET)
    with shared_session(scene) as sandbox:
        setup = (
            f"mkdir -m 777 shared/sub && echo INSIDE > shared/sub/in.txt && ln -s {shlex.quote(str(out))} shared/.alt"
        )
        sh(sandbox, f"printf %s {shlex.quote(RESULT.decode())} > result.txt && {setup}")
        started = sandbox.run(["sh", "-c", 'python3 -c "$0" >/workspace/.bg.log 2>&1 &', SWAPPER])
        assert started.status == nsbox.Status.OK, started
        sh(sandbox, "while [ ! -e /workspace/.swapping ]; do sleep 0.01; done", timeout=15)
        outside_before = tree(out)
        counts: dict[str, int] = {}
        failures: list[str] = []
        try:
            for i in range(300):
                for label, call in (
                    ("download", functools.partial(sandbox.download, "result.txt", scene.hostdir / "sub" / "out.txt")),
                    ("upload", functools.partial(sandbox.upload, scene.hostdir / "sub" / "in.txt", f"got-{i % 5}")),
                ):
                    try:
                        call()
                    except (SecurityError, FileNotFoundError, NotADirectoryError) as exc:
                        counts[f"{label} {type(exc).__name__}"] = counts.get(f"{label} {type(exc).__name__}", 0) + 1
                    except Exception as exc:
                        failures.append(f"{label}: raised {type(exc).__name__}: {exc}")
                    else:
                        counts[f"{label} ok"] = counts.get(f"{label} ok", 0) + 1
        finally:
            sh(sandbox, "touch /workspace/.stop; while [ ! -e /workspace/.swaps ]; do sleep 0.01; done", timeout=15)
        swaps, seconds = map(float, sh(sandbox, "cat /workspace/.swaps").split())
        outside_after = tree(out)
        leaked = sh(sandbox, "grep -l 'HOST-SECRET' got-* 2>/dev/null || true").decode().split()
        assert failures == [], "\n".join(failures[:20])
        assert outside_after == outside_before, f"written through the swapped link: {counts}"
        assert leaked == [], f"uploaded from the canary's directory through the swapped link: {leaked}, {counts}"
        assert swaps / seconds >= 1000, (swaps, seconds)
        assert counts.get("download ok", 0) >= 1 and counts.get("upload ok", 0) >= 1, f"none got through: {counts}"


# --- files that are no regular files -------------------------------------------------------------
def test_upload_of_a_planted_fifo_returns_promptly(shared: Shared) -> None:
    """A FIFO planted as data.csv would block upload() in open() until someone writes."""
    scene = shared
    with shared_session(scene) as sandbox:
        sh(sandbox, "mkfifo -m 666 shared/data.csv && ln -s data.csv shared/via-link.csv")
        fifo = scene.hostdir / "data.csv"
        failures: list[str] = []
        refused_promptly(failures, "upload(HOSTDIR/data.csv)", functools.partial(sandbox.upload, fifo), fifo)
        refused_promptly(
            failures,
            "upload(HOSTDIR/data.csv, follow_symlinks=True)",
            functools.partial(sandbox.upload, fifo, "f2", follow_symlinks=True),
            fifo,
        )
        refused_promptly(
            failures,
            "upload(HOSTDIR/via-link.csv -> FIFO, follow_symlinks=True)",
            functools.partial(sandbox.upload, scene.hostdir / "via-link.csv", "f3", follow_symlinks=True),
            fifo,
        )
        assert failures == [], "\n".join(failures)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert sh(sandbox, "ls /workspace") == b"shared\n", "a refused upload wrote a file"


def test_upload_of_a_directory_or_a_device_is_refused(shared: Shared, host_tmp: Callable[..., Path]) -> None:
    scene = shared
    folder = host_tmp("folder", 0o755)
    (folder / "f").write_bytes(b"in a folder\n")
    with shared_session(scene) as sandbox:
        sh(sandbox, "mkdir shared/planted-dir")
        failures: list[str] = []
        for source, dest in (
            (folder, "folder"),
            (scene.hostdir / "planted-dir", "planted"),
            (Path("/dev/null"), "null"),
            (Path("/dev/zero"), "zero"),  # would read 64 MiB + 1 and then fail on the size
        ):
            refused_promptly(failures, f"upload({source}, {dest!r})", functools.partial(sandbox.upload, source, dest))
        refused_promptly(
            failures,
            "upload(/dev/null, follow_symlinks=True)",
            functools.partial(sandbox.upload, "/dev/null", "null2", follow_symlinks=True),
        )
        assert failures == [], "\n".join(failures)
        assert sh(sandbox, "ls /workspace") == b"shared\n", "a refused upload wrote a file"


def test_download_onto_a_fifo_or_a_directory_is_refused(shared: Shared, host_tmp: Callable[..., Path]) -> None:
    """The destination's existing last component is a FIFO (made on the host, or planted by
    the sandbox) or a directory: refused at once; the FIFO stays a FIFO, nothing blocks, the
    directory keeps its entries, and no temporary file is left beside them."""
    scene = shared
    downloads = host_tmp("dl", 0o755)
    os.mkfifo(downloads / "fifo")
    (downloads / "adir").mkdir()
    (downloads / "adir" / "keep").write_bytes(CANARY)
    with shared_session(scene) as sandbox:
        sh(sandbox, f"printf %s {shlex.quote(RESULT.decode())} > result.txt")
        sh(sandbox, "mkfifo -m 666 shared/out.fifo && mkdir shared/outdir && echo KEEP > shared/outdir/keep")
        before = {"downloads": tree(downloads), "hostdir": tree(scene.hostdir)}
        failures: list[str] = []
        for dest in (downloads / "fifo", scene.hostdir / "out.fifo"):
            refused_promptly(
                failures,
                f"download('result.txt', {dest.name} (a FIFO))",
                functools.partial(sandbox.download, "result.txt", dest),
                dest,
                writer_side=False,
            )
        for dest in (downloads / "adir", scene.hostdir / "outdir", f"{downloads}/adir/"):
            refused_promptly(
                failures,
                f"download('result.txt', {dest!s} (a directory))",
                functools.partial(sandbox.download, "result.txt", dest),
            )
        refused_promptly(
            failures,
            "download('result.txt', FIFO, follow_symlinks=True)",
            functools.partial(sandbox.download, "result.txt", downloads / "fifo", follow_symlinks=True),
            downloads / "fifo",
            writer_side=False,
        )
        after = {"downloads": tree(downloads), "hostdir": tree(scene.hostdir)}
        assert failures == [], "\n".join(failures)
        assert after == before, "a refused download changed or left something on the host"


# --- downloads are atomic; hard links --------------------------------------------------------------
def test_download_replaces_the_destination_atomically(shared: Shared, host_tmp: Callable[..., Path]) -> None:
    """A reader polling the destination while it is downloaded again and again sees only
    whole versions (never an empty or a half-written file); the destination is replaced
    (a new inode: the temporary file renamed over it), and no temporary file is left."""
    size = 16 << 20
    versions = {bytes([c]) * size for c in b"ABC"}
    downloads = host_tmp("dl", 0o755)
    dest = downloads / "result.bin"
    dest.write_bytes(b"A" * size)
    inode = os.stat(dest).st_ino
    original = os.open(dest, os.O_RDONLY)  # held open: its inode number cannot be reused meanwhile
    with contextlib.ExitStack() as held, shared_session(shared) as sandbox:
        held.callback(os.close, original)
        sh(sandbox, f"head -c {size} /dev/zero | tr '\\0' B > b.bin && head -c {size} /dev/zero | tr '\\0' C > c.bin")
        torn: list[int] = []
        reads = 0
        stop = threading.Event()

        def reader() -> None:
            nonlocal reads
            while not stop.is_set():
                with contextlib.suppress(FileNotFoundError):
                    data = dest.read_bytes()
                    reads += 1
                    if data not in versions:
                        torn.append(len(data))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            for i in range(8):
                sandbox.download(("b.bin", "c.bin")[i % 2], dest)
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive()
        assert dest.read_bytes() == b"C" * size
        assert torn == [], f"a reader saw {len(torn)} torn versions of {reads} reads (sizes {sorted(set(torn))[:8]})"
        assert os.stat(dest).st_ino != inode, "the destination was rewritten in place, not replaced by a rename"
        assert sorted(os.listdir(downloads)) == ["result.bin"], "a temporary file was left"


def test_download_onto_a_hard_link_does_not_write_the_linked_file(shared: Shared) -> None:
    """HOSTDIR/input.csv is the host's (0644: the sandbox may read it, not write it). A
    sandbox makes report.txt a hard link to it (where fs.protected_hardlinks is 0; with 1 the
    kernel refuses, and the test makes the link itself, as a stand-in): downloading to
    report.txt must replace the link's name, not write the host's file."""
    scene = shared
    (scene.hostdir / "input.csv").write_bytes(CANARY)
    os.chmod(scene.hostdir / "input.csv", 0o644)
    with shared_session(scene) as sandbox:
        sh(sandbox, f"printf %s {shlex.quote(RESULT.decode())} > result.txt")
        planted = sandbox.run(["ln", "shared/input.csv", "shared/report.txt"], capture_output=True)
        by_sandbox = planted.status == nsbox.Status.OK
        if not by_sandbox:
            os.link(scene.hostdir / "input.csv", scene.hostdir / "report.txt")
        before = data_of(scene.hostdir / "input.csv")
        with contextlib.suppress(SecurityError):  # refusing a destination with other links is fine too
            sandbox.download("result.txt", scene.hostdir / "report.txt")
        assert data_of(scene.hostdir / "input.csv") == before, (
            f"the download wrote through a hard link (planted by {'the sandbox' if by_sandbox else 'the test'})"
        )
        print(f"hard link planted by the sandbox: {by_sandbox} ({planted.stderr!r})")


# --- opting in, and what still works ----------------------------------------------------------------
def test_follow_symlinks_opts_in_to_a_deliberate_symlink(host_tmp: Callable[..., Path]) -> None:
    """The caller's own links (a file link, and a directory link on the way): refused by
    default, followed with ``follow_symlinks=True``."""
    mine = host_tmp("mine", 0o755)
    (mine / "real").mkdir()
    (mine / "real" / "data.txt").write_bytes(b"DELIBERATE\n")
    (mine / "real" / "dest.txt").write_bytes(b"OLD\n")
    (mine / "data-link.txt").symlink_to("real/data.txt")
    (mine / "dest-link.txt").symlink_to("real/dest.txt")
    (mine / "alias").symlink_to("real")
    with session() as sandbox:
        sh(sandbox, f"printf %s {shlex.quote(RESULT.decode())} > result.txt")
        failures: list[str] = []
        for source in ("data-link.txt", "alias/data.txt"):
            expect_refusal(failures, f"upload({source})", functools.partial(sandbox.upload, mine / source, "x"))
        for dest in ("dest-link.txt", "alias/dest.txt", "alias/new.txt"):
            expect_refusal(
                failures, f"download(.., {dest})", functools.partial(sandbox.download, "result.txt", mine / dest)
            )
        assert failures == [], "\n".join(failures)
        assert (mine / "real" / "dest.txt").read_bytes() == b"OLD\n"
        assert not os.path.lexists(mine / "real" / "new.txt")
        assert sh(sandbox, "ls /workspace") == b"result.txt\n"

        sandbox.upload(mine / "data-link.txt", "via-file-link.txt", follow_symlinks=True)
        sandbox.upload(mine / "alias" / "data.txt", "via-dir-link.txt", follow_symlinks=True)
        assert sandbox.read_file("via-file-link.txt") == b"DELIBERATE\n"
        assert sandbox.read_file("via-dir-link.txt") == b"DELIBERATE\n"
        sandbox.download("result.txt", mine / "dest-link.txt", follow_symlinks=True)
        assert (mine / "dest-link.txt").read_bytes() == RESULT
        sandbox.download("result.txt", mine / "alias" / "new.txt", follow_symlinks=True)
        assert (mine / "real" / "new.txt").read_bytes() == RESULT


def test_ordinary_uploads_and_downloads_still_work(
    host_tmp: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Absolute and relative paths (str and Path), a new destination and an existing regular
    one (replaced), a deep destination below existing directories; a failed download (no
    such file) leaves nothing behind."""
    work = host_tmp("work", 0o755)
    (work / "deep" / "er").mkdir(parents=True)
    (work / "in.txt").write_bytes(b"UPLOADED\n")
    (work / "existing.txt").write_bytes(b"OLD CONTENT, LONGER THAN THE NEW ONE\n")
    monkeypatch.chdir(work)
    with session() as sandbox:
        sh(sandbox, f"printf %s {shlex.quote(RESULT.decode())} > result.txt")
        sandbox.upload(str(work / "in.txt"))
        sandbox.upload("in.txt", "relative.txt")
        sandbox.upload(Path("in.txt"), "sub/path.txt")
        assert sh(sandbox, "cat in.txt relative.txt sub/path.txt") == b"UPLOADED\n" * 3
        sandbox.download("result.txt", str(work / "new.txt"))
        sandbox.download("result.txt", "relative-new.txt")
        sandbox.download("result.txt", work / "existing.txt")
        sandbox.download("result.txt", Path("deep/er/out.txt"))
        for name in ("new.txt", "relative-new.txt", "existing.txt", "deep/er/out.txt"):
            assert (work / name).read_bytes() == RESULT, name
            assert stat.S_ISREG(os.lstat(work / name).st_mode), name
        listing = sorted(os.listdir(work))
        with pytest.raises(FileNotFoundError):
            sandbox.download("missing.txt", work / "missing.txt")
        assert sorted(os.listdir(work)) == listing, "a failed download left a file"
        assert sorted(os.listdir(work / "deep" / "er")) == ["out.txt"]
