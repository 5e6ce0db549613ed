"""`nsbox rootfs build`: the minimal recipe built for real (debootstrap from Debian's
archive, once per test run, ~35 s), then used with ``--rootfs minimal`` through the API and
the CLI. The data directory is this test run's own (conftest: NSBOX_DATA_DIR)."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nsbox
from nsbox._rootfs._recipe import find_recipe, load_recipe
from tests._images import file, oci_archive, whiteout
from tests.conftest import NSBOX_CLI, SandboxRun, require_root, require_sandbox

WHY_ROOT = "debootstrap installs packages as root"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NSBOX_CLI, "rootfs", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _roots() -> Path:
    return Path(os.environ["NSBOX_DATA_DIR"], "rootfs")


@pytest.fixture(scope="module")
def minimal() -> Iterator[dict[str, object]]:
    """The minimal recipe, built once; yields the first build's stderr and manifest."""
    require_root(WHY_ROOT)
    started = time.monotonic()
    first = _cli("build", "minimal")
    assert first.returncode == 0, first.stderr
    manifest = json.loads((_roots() / "minimal" / "manifest.json").read_text())
    yield {"stderr": first.stderr, "manifest": manifest, "seconds": time.monotonic() - started}
    removed = _cli("remove", "minimal")
    assert removed.returncode == 0, removed.stderr
    assert not (_roots() / "minimal").exists()


def test_build_shows_its_progress_and_records_python3s_version(minimal: dict[str, object]) -> None:
    stderr = str(minimal["stderr"])
    steps = ("[1/4] debootstrap --variant=minbase bookworm", "Valid Release signature", "[2/4] apt-get install")
    for step in (*steps, "[2/4] apt-get upgrade from http://deb.debian.org/debian-security bookworm-security"):
        assert step in stderr
    manifest = minimal["manifest"]
    assert isinstance(manifest, dict)
    assert manifest["packages"]["python3"].startswith("3.11")
    assert manifest["recipe"]["sha256"] == load_recipe(find_recipe("minimal")).sha256
    assert manifest["size_bytes"] > 50e6 and manifest["files"] > 1000
    assert f"built minimal in {manifest['build_seconds']:.0f} s" in stderr


def test_python3_of_the_built_root_runs_inside(minimal: dict[str, object], sandbox_run: SandboxRun) -> None:
    out = sandbox_run(
        ["python3", "-c", "import sys; print(sys.version.split()[0]); print(open('/etc/nsbox-rootfs').read())"],
        rootfs="minimal",
    )
    assert out.status == "ok", out.stderr
    version, marker = out.stdout.decode().split("\n", 1)
    manifest = minimal["manifest"]
    assert isinstance(manifest, dict)
    assert manifest["packages"]["python3"].startswith(version.rsplit(".", 1)[0])  # 3.11.2 <-> 3.11.2-1+b1
    assert marker.startswith("minimal: Debian bookworm")  # the recipe's file: not the host's root


def test_execute_code_uses_the_roots_python(minimal: dict[str, object]) -> None:
    require_sandbox()
    with nsbox.NsSandbox(rootfs="minimal") as sandbox:
        result = sandbox.execute_code("import sys\nprint(sys.version.split()[0])\nx = 6 * 7")
        assert result.success, result.error
        manifest = minimal["manifest"]
        assert isinstance(manifest, dict)
        assert manifest["packages"]["python3"].startswith(result.stdout.strip().rsplit(".", 1)[0])
        assert sandbox.execute_code("print(x)").stdout.strip() == "42"
        assert sandbox.run(["cat", "/etc/nsbox-rootfs"], capture_output=True).stdout.startswith(b"minimal")


def test_the_built_root_has_no_setuid_binary_no_device_node_and_no_writable_file(
    minimal: dict[str, object],
) -> None:
    """No setuid or device to use, and nothing another host user could change (debootstrap
    leaves /var/tmp 1777, and files of other owners) in a root every sandbox sees."""
    tree = _roots() / "minimal" / "root"
    found = []
    for folder, dirs, files in os.walk(tree):
        for name in dirs + files:
            info = os.lstat(os.path.join(folder, name))
            mode = info.st_mode
            if mode & (stat.S_ISUID | stat.S_ISGID) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(os.path.join(folder, name))
            if (not stat.S_ISLNK(mode) and mode & 0o022) or (info.st_uid, info.st_gid) != (0, 0):
                found.append(os.path.join(folder, name))
    assert found == []
    assert (tree / "etc/resolv.conf").read_text() == ""  # not the build host's DNS servers
    assert (tree / "etc/hostname").read_text() == "nsbox\n"
    security = (tree / "etc/apt/sources.list.d/nsbox-security.list").read_text()
    assert security == "deb http://deb.debian.org/debian-security bookworm-security main\n"
    manifest = minimal["manifest"]
    assert isinstance(manifest, dict)
    assert "usr/bin/su" in manifest["stripped_setuid"]  # debootstrap made it setuid; not any more
    assert "dev/null" in manifest["removed_devices"]
    assert (tree / "usr/bin/su").stat().st_mode & 0o7777 == 0o755


def test_su_inside_cannot_become_anyone(minimal: dict[str, object], sandbox_run: SandboxRun) -> None:
    out = sandbox_run(["sh", "-c", "stat -c %a /usr/bin/su; su -c id root </dev/null"], rootfs="minimal")
    assert out.stdout.decode().splitlines()[0] == "755"
    assert out.exit_code != 0  # not setuid, and no_new_privs besides


@pytest.fixture(scope="module")
def minimal_tar(minimal: dict[str, object]) -> bytes:
    """The built root as one image layer: all of it, owners, links, hard links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(_roots() / "minimal" / "root", arcname=".")
    return buffer.getvalue()


def test_an_image_of_the_built_root_imports_and_runs(
    minimal: dict[str, object], minimal_tar: bytes, sandbox_run: SandboxRun, tmp_path: Path
) -> None:
    """An OCI image of the real root (one layer: all of it, owners, links, hard links), plus
    a layer with a whiteout and a file: imported, it runs as the built root does."""
    top = [whiteout("etc/nsbox-rootfs"), file("etc/image-marker", "from an image\n")]
    image = oci_archive([minimal_tar, top]).write(tmp_path / "image.tar")
    root = nsbox.import_rootfs(str(image), "from-image")
    assert root.manifest["image"]["refused_count"] == 0
    assert root.manifest["packages"] == minimal["manifest"]["packages"]  # type: ignore[index]
    out = sandbox_run(
        ["python3", "-c", "import os; print(os.path.exists('/etc/nsbox-rootfs'), open('/etc/image-marker').read())"],
        rootfs="from-image",
    )
    assert out.status == "ok", out.stderr
    assert out.stdout == b"False from an image\n\n"


def test_a_root_replaced_or_removed_stays_whole_for_the_sandbox_on_it(minimal_tar: bytes, tmp_path: Path) -> None:
    """A rebuild must not take the files from under a running sandbox: its supervisor holds
    the root; the old tree is kept (retired) until the sandbox ends, then removed."""
    require_sandbox()
    versions = [oci_archive([minimal_tar, [file("etc/version", v)]]).write(tmp_path / f"{v}.tar") for v in ("1", "2")]
    nsbox.import_rootfs(str(versions[0]), "live")
    with nsbox.NsSandbox(rootfs="live") as sandbox:
        nsbox.import_rootfs(str(versions[1]), "live")  # replaced while the sandbox runs
        old = sandbox.run(["python3", "-c", "print(open('/etc/version').read())"], capture_output=True)
        assert (old.status.value, old.stdout) == ("ok", b"1\n")
        with nsbox.NsSandbox(rootfs="live") as newer:  # a new sandbox gets the new root
            assert newer.run(["cat", "/etc/version"], capture_output=True).stdout == b"2"
        nsbox.remove_rootfs("live")  # removed while it still runs: kept for it too
        again = sandbox.run(["python3", "-c", "print(open('/etc/version').read())"], capture_output=True)
        assert (again.status.value, again.stdout) == ("ok", b"1\n")
        retired = [e for e in os.listdir(_roots()) if e.startswith(".retired+live+")]
        assert len(retired) == 1  # version 1, this sandbox's; version 2 (`newer` has ended) went at once
    nsbox.import_rootfs(str(versions[0]), "live")  # the next write of the name sweeps what is free
    assert [e for e in os.listdir(_roots()) if e.startswith((".retired+live+", ".staging+live+"))] == []
    nsbox.remove_rootfs("live")
    assert [e for e in os.listdir(_roots()) if "live" in e and not e.endswith(".lock")] == []


def test_a_second_build_is_a_no_op(minimal: dict[str, object]) -> None:
    folder = _roots() / "minimal"
    before = (folder.stat().st_ino, (folder / "manifest.json").stat().st_mtime_ns)
    again = _cli("build", "minimal")
    assert again.returncode == 0, again.stderr
    assert "minimal: up to date" in again.stderr and "[1/4]" not in again.stderr
    assert (folder.stat().st_ino, (folder / "manifest.json").stat().st_mtime_ns) == before


def test_list_shows_the_root_and_its_python(minimal: dict[str, object]) -> None:
    listing = _cli("list")
    assert listing.returncode == 0
    assert "minimal" in listing.stdout and "python3 3.11" in listing.stdout
    roots = json.loads(_cli("list", "--json").stdout)
    minimal_root = next(r for r in roots if r["name"] == "minimal")
    assert minimal_root["path"] == str(_roots() / "minimal" / "root")
    assert minimal_root["kind"] == "recipe" and minimal_root["packages"]["python3"].startswith("3.11")


def test_an_unknown_root_name_is_a_usage_error_that_says_how_to_make_it() -> None:
    out = subprocess.run(
        [NSBOX_CLI, "exec", "--rootfs", "no-such-root", "--", "true"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 125
    assert "no root named 'no-such-root'" in out.stderr and "nsbox rootfs build" in out.stderr


def test_without_debootstrap_the_error_says_what_to_install() -> None:
    require_root(WHY_ROOT)
    env = {**os.environ, "PATH": "/nonexistent"}
    out = _cli("build", "minimal", "--name", "no-debootstrap", env=env)
    assert out.returncode == 1
    assert "debootstrap" in out.stderr and "apt-get install debootstrap" in out.stderr
    assert not (_roots() / "no-debootstrap").exists()


def test_no_space_is_said_before_anything_is_downloaded(tmp_path: Path) -> None:
    require_root("mounts a small tmpfs as the data directory")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "nsbox-test", str(tmp_path)], check=True)
    try:
        out = _cli("build", "minimal", env={**os.environ, "NSBOX_DATA_DIR": str(tmp_path)})
        assert out.returncode == 1
        assert "no space for minimal" in out.stderr and "NSBOX_DATA_DIR" in out.stderr
        assert "[1/4]" not in out.stderr
        assert [p.name for p in (tmp_path / "rootfs").iterdir() if not p.name.endswith(".lock")] == []
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)


def test_an_interrupted_build_leaves_no_mount_and_no_half_root(tmp_path: Path) -> None:
    """Ctrl-C in the middle of debootstrap: the staging folder is removed, and none of the
    mounts debootstrap made (proc, sys in the new root) outlives it (private mount namespace)."""
    require_root(WHY_ROOT)
    env = {**os.environ, "NSBOX_DATA_DIR": str(tmp_path)}
    build = subprocess.Popen(
        [NSBOX_CLI, "rootfs", "build", "minimal"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C reaches it and debootstrap, nothing else
        # as a terminal's foreground job has it: a shell starts background jobs with SIGINT
        # ignored, which a child inherits (and Python then keeps), so a CI run started with `&` would not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: list[str] = []
    try:
        assert build.stderr is not None
        for line in build.stderr:
            seen.append(line)
            if "I: Unpacking" in line or "I: Installing core packages" in line:
                break  # debootstrap's second stage: its chroot and mounts are there
        else:
            raise AssertionError(f"the premise: interrupted mid-build; it ended first, showing {seen[-8:]}")
        os.killpg(build.pid, signal.SIGINT)
        build.wait(timeout=60)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    assert build.returncode != 0
    assert [p.name for p in (tmp_path / "rootfs").iterdir() if not p.name.endswith(".lock")] == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
