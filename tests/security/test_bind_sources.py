"""Bind sources are opened exactly as planned: a symlink planted or swapped in is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import nsbox
from nsbox import _linux
from nsbox._mount import open_sources, plan_root
from tests.conftest import SandboxRun, require_sandbox


def test_a_source_swapped_for_a_symlink_is_refused(tmp_path: Path) -> None:
    """An earlier sandbox with a writable bind could plant `out -> /etc`; a later bind of
    `out` must not become the host's /etc."""
    require_sandbox()
    share = tmp_path / "share"
    (share / "out").mkdir(parents=True)
    spec = nsbox.SandboxSpec(mounts=(nsbox.Mount(str(share / "out"), "/mnt/results"),))
    (share / "out").rmdir()
    (share / "out").symlink_to("/etc")
    with pytest.raises((nsbox.SpecError, nsbox.SetupError), match=r"symlink|resolves"):
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


def test_a_symlinked_source_is_recorded_as_its_real_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert nsbox.Mount(str(tmp_path / "link"), "/x").source == str(tmp_path / "real")


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
