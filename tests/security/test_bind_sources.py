"""Bind sources are opened exactly as planned: a symlink planted or swapped in is refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import nsbox
from nsbox import _linux
from nsbox._mount import open_sources, plan_root
from tests.conftest import NSBOX_CLI, SandboxRun, require_root, require_sandbox


def test_a_source_swapped_for_a_symlink_is_refused(tmp_path: Path) -> None:
    """An earlier sandbox with a writable bind could plant `out -> /etc`; a later bind of
    `out` must not become the host's /etc."""
    require_sandbox()
    share = tmp_path / "share"
    (share / "out").mkdir(parents=True)
    spec = nsbox.SandboxSpec(mounts=(nsbox.Mount(str(share / "out"), "/mnt/results"),))
    (share / "out").rmdir()
    (share / "out").symlink_to("/etc")
    with pytest.raises((nsbox.SpecError, nsbox.SetupError), match=r"symlink|symbolic link|resolves"):
        nsbox.NsSandbox(spec).start()


def test_sources_are_opened_without_following_symlinks_and_by_kind(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        open_sources([(str(tmp_path / "link"), "dir")])
    assert info.value.errno == 40  # ELOOP
    with pytest.raises(OSError, match="no longer a dir"):
        open_sources([(str(tmp_path / "file"), "dir")])
    fds = open_sources([(str(tmp_path / "real"), "dir"), (str(tmp_path / "file"), "file")])
    assert len(fds) == 2
    for fd in fds:
        os.close(fd)


def test_a_symlink_of_roots_own_is_followed_and_recorded_as_its_real_path(tmp_path: Path) -> None:
    require_root("only a link that root owns, in a folder only root can write, is followed")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.chmod(tmp_path, 0o755)
    assert nsbox.Mount(str(tmp_path / "link"), "/x").source == str(tmp_path / "real")
    if os.path.islink("/lib"):  # merged /usr: the system's own links are followed as before
        assert nsbox.Mount("/lib", "/y").source == os.path.realpath("/lib")


def test_a_link_in_a_folder_others_can_write_is_refused_even_if_root_made_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "link").symlink_to(tmp_path)
    os.chmod(shared, 0o777)  # as /tmp, or a writable bind's folder: anyone could have swapped it
    with pytest.raises(nsbox.SpecError, match="symbolic link"):
        nsbox.Mount(str(shared / "link"), "/x")


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A host folder a sandbox could write (a writable bind), in which that sandbox planted
    ``sub -> /``: with realpath, a later bind of ``shared/sub`` would have been the host's /."""
    require_sandbox()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)
    with nsbox.NsSandbox(mounts=(nsbox.Mount(str(shared), "/workspace/shared", writable=True),)) as sandbox:
        assert sandbox.run(["ln", "-s", "/", "/workspace/shared/sub"]).ok
    assert os.path.realpath(shared / "sub") == "/", "premise: the planted link leads to the host's /"
    return shared / "sub"


def test_a_link_a_sandbox_planted_is_not_followed_into_a_later_bind(planted: Path) -> None:
    for make in (
        lambda: nsbox.Mount(str(planted), "/data"),
        lambda: nsbox.Mount(str(planted / "etc"), "/data", writable=True),
        lambda: nsbox.SandboxSpec(wheels=str(planted)),
        lambda: nsbox.SandboxSpec(rootfs=str(planted)),
    ):
        with pytest.raises(nsbox.SpecError, match=r"symbolic link .*sub'.* leads to '/'"):
            make()


def test_the_cli_refuses_a_planted_link_in_a_bind_source(planted: Path) -> None:
    proc = subprocess.run(
        [NSBOX_CLI, "exec", "--ro-bind", f"{planted}:/data", "--", "ls", "/data/proc"], capture_output=True, timeout=60
    )
    assert proc.returncode == 125, proc
    assert b"symbolic link" in proc.stderr and b"/proc" not in proc.stdout, proc


def test_targets_in_the_hosts_old_root_are_reserved() -> None:
    with pytest.raises(nsbox.SpecError, match=r"/\.old"):
        nsbox.Mount("/etc/hostname", "/.old/tmp/nsbox-leak")


def test_a_rootfs_entry_named_like_the_old_root_is_skipped(tmp_path: Path) -> None:
    (tmp_path / ".old").mkdir()
    (tmp_path / "usr").mkdir()
    plan = plan_root(nsbox.SandboxSpec(rootfs=str(tmp_path)), (1000, 1000))
    assert [b.target for b in plan.system_binds] == ["/usr"]


def test_writable_bind_targets_cannot_reach_the_host_tree(sandbox_run: SandboxRun, tmp_path: Path) -> None:
    """User binds are attached after the host's tree is gone: nothing lands on the host."""
    (tmp_path / "data").mkdir()
    before = set(os.listdir("/tmp"))
    out = sandbox_run(["sh", "-c", "ls /; test -e /.old && echo old-visible || echo no-old"],
                      bind=[f"{tmp_path / 'data'}:/workspace/data"])  # fmt: skip
    assert b"no-old" in out.stdout
    assert set(os.listdir("/tmp")) - before <= {p for p in os.listdir("/tmp") if p.startswith(("tmp", "pytest"))}


def test_openat2_refuses_magic_links() -> None:
    with pytest.raises(OSError):
        _linux.openat2(_linux.AT_FDCWD, "/proc/self/root/etc", os.O_PATH, _linux.RESOLVE_NO_MAGICLINKS)
