"""The root plan is decided before anything is forked; bad targets are refused there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsbox import Mount, SandboxSpec, SpecError
from nsbox._mount import HOST_SYSTEM_PATHS, plan_root


def test_host_plan_binds_system_dirs_and_recreates_their_links() -> None:
    plan = plan_root(SandboxSpec(), (1000, 1000))
    bound = {b.target for b in plan.system_binds}
    linked = dict(plan.links)
    for path in HOST_SYSTEM_PATHS:
        if os.path.islink(path):
            assert linked[path] == os.readlink(path)
        elif os.path.isdir(path):
            assert path in bound
    assert all(not b.writable for b in plan.system_binds)
    assert "/etc" not in bound, "the host's /etc is never bound whole"
    assert {"/etc/passwd", "/etc/hosts", "/etc/hostname"} <= {path for path, _ in plan.files}
    assert "/etc/shadow" not in bound


def test_rootfs_plan_mirrors_the_tree_but_not_what_nsbox_provides(tmp_path: Path) -> None:
    for name in ("usr", "etc", "proc", "dev", "workspace"):
        (tmp_path / name).mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    plan = plan_root(SandboxSpec(rootfs=str(tmp_path)), (1000, 1000))
    assert {b.target for b in plan.system_binds} == {"/usr", "/etc"}
    assert dict(plan.links) == {"/bin": "usr/bin"}
    assert plan.files == ()


def test_a_target_inside_a_read_only_bind_must_already_exist(tmp_path: Path) -> None:
    spec = SandboxSpec(mounts=(Mount(str(tmp_path), "/usr/share/nsbox-not-there"),))
    with pytest.raises(SpecError, match="does not create paths on the host"):
        plan_root(spec, (1000, 1000))


def test_a_target_inside_another_bind_must_exist_there(tmp_path: Path) -> None:
    (tmp_path / "outer").mkdir()
    (tmp_path / "inner").mkdir()
    spec = SandboxSpec(
        mounts=(Mount(str(tmp_path / "outer"), "/data", True), Mount(str(tmp_path / "inner"), "/data/sub"))
    )
    with pytest.raises(SpecError, match="/data/sub"):
        plan_root(spec, (1000, 1000))
    (tmp_path / "outer" / "sub").mkdir()
    plan = plan_root(spec, (1000, 1000))
    assert [b.target for b in plan.user_binds] == ["/data", "/data/sub"]  # parents first


def test_targets_in_the_workspace_are_fine(tmp_path: Path) -> None:
    plan = plan_root(SandboxSpec(mounts=(Mount(str(tmp_path), "/workspace/in"),)), (1000, 1000))
    assert plan.user_binds[0].target == "/workspace/in"
