"""What the store's, a build's and the cache's host-side checks (tests/security/test_store_paths.py)
must leave working: a data directory reached through the caller's own symlink, folders made
0755 whatever the umask, a root that cannot be used still removed or replaced by nsbox's own
commands, holds on stored roots, the caller's symlinked image and recipe files, apt's caches
dropped. Everything is made in this test's own folders."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsbox._errors import RootfsError, SpecError
from nsbox._rootfs import _build, _store, import_rootfs, list_rootfs, remove_rootfs
from nsbox._rootfs._recipe import load_recipe
from tests._images import file, oci_archive
from tests.conftest import require_root


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    monkeypatch.setenv("NSBOX_DATA_DIR", str(directory))
    return directory


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return oci_archive([[file("etc/os-release", "ID=test\n")]]).write(tmp_path / "image.tar")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host folder a symlinked tree points at: it must keep what it holds."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "victim").write_text("host data\n")
    return directory


def _symlinked_root(data: Path, name: str, target: Path) -> Path:
    folder = data / "rootfs" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"kind": "image"}))
    (folder / "root").symlink_to(target)
    return folder


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(previous)


def test_an_import_makes_its_folders_0755_whatever_the_umask(data: Path, image: Path, loose_umask: None) -> None:
    root = import_rootfs(str(image), "app")
    for folder in (data, data / "rootfs", data / "rootfs" / "app", Path(root.path)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    assert [r.name for r in list_rootfs()] == ["app"]
    assert _store.resolve("app") == root.path


def test_a_data_directory_reached_through_the_callers_own_symlink_is_used(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "big-disk" / "nsbox"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("NSBOX_DATA_DIR", str(tmp_path / "link"))
    root = import_rootfs(str(image), "app")
    assert (
        os.path.realpath(_store.resolve("app")) == str(real / "rootfs" / "app" / "root") == os.path.realpath(root.path)
    )


def test_the_refusal_says_what_to_run(data: Path) -> None:
    (data / "rootfs").mkdir(parents=True)
    data.chmod(0o775)
    with pytest.raises(RootfsError) as caught:
        list_rootfs()
    assert "may be written by its group" in caught.value.message
    assert caught.value.remedy.startswith(f"`chmod go-w {data}`") and "NSBOX_DATA_DIR" in caught.value.remedy


def test_a_data_directory_of_another_user_names_the_owner(data: Path) -> None:
    require_root("gives the data directory to another owner (chown)")
    (data / "rootfs").mkdir(parents=True)
    os.chown(data, 12345, 12345)
    with pytest.raises(RootfsError, match="belongs to uid 12345") as caught:
        list_rootfs()
    assert caught.value.remedy.startswith(f"`chown {os.geteuid()} {data}`")


def test_an_unusable_root_is_removed_without_touching_what_it_points_at(data: Path, outside: Path) -> None:
    _symlinked_root(data, "bad", outside)
    with pytest.raises(RootfsError, match="nsbox rootfs remove bad"):
        list_rootfs()
    remove_rootfs("bad")
    assert list_rootfs() == []
    assert (outside / "victim").read_text() == "host data\n"


def test_an_unusable_root_is_replaced_by_a_new_import(data: Path, image: Path, outside: Path) -> None:
    _symlinked_root(data, "app", outside)
    root = import_rootfs(str(image), "app")
    assert not root.up_to_date and Path(root.path, "etc", "os-release").read_text() == "ID=test\n"
    assert _store.resolve("app") == root.path
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "host data\n"


def test_an_unknown_name_is_still_a_usage_error_beside_an_unusable_root(data: Path, outside: Path) -> None:
    _symlinked_root(data, "bad", outside)
    with pytest.raises(SpecError, match="no root named 'other'"):
        _store.resolve("other")


def test_a_stored_root_is_held_and_a_folder_of_ones_own_is_not(data: Path, image: Path, tmp_path: Path) -> None:
    root = import_rootfs(str(image), "app")
    fd = _store.hold(root.path)
    assert fd is not None
    try:
        assert _store.still_held(fd, root.path)
        probe = os.open(os.path.dirname(root.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):  # shared: no exclusive lock while it is held
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    finally:
        os.close(fd)
    own = tmp_path / "own" / "root"
    own.mkdir(parents=True)
    assert _store.hold(str(own)) is None
    (own.parent / "manifest.json").write_text("{}")
    own.parent.chmod(0o777)  # beside a manifest, but in a folder anyone may write: no root of a store
    assert _store.hold(str(own)) is None


def test_an_image_and_a_recipe_named_through_the_callers_symlink_are_read(
    data: Path, image: Path, tmp_path: Path
) -> None:
    (tmp_path / "link.tar").symlink_to(image)
    assert Path(import_rootfs(str(tmp_path / "link.tar"), "app").path, "etc", "os-release").exists()
    recipe = tmp_path / "mine.toml"
    recipe.write_text('suite = "bookworm"\npackages = ["python3"]\n')
    (tmp_path / "link.toml").symlink_to(recipe)
    assert load_recipe(tmp_path / "link.toml").packages == ("python3",)


def test_a_recipe_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "big.toml"
    recipe.write_text('suite = "bookworm"\n' + "#" * (1 << 20))
    with pytest.raises(SpecError, match="bytes"):
        load_recipe(recipe)


def test_apts_caches_are_dropped_and_their_folders_kept(tmp_path: Path, outside: Path) -> None:
    tree = tmp_path / "tree"
    apt = tree / "var" / "cache" / "apt"
    (apt / "archives" / "partial").mkdir(parents=True)
    (apt / "archives" / "python3.deb").write_bytes(b"deb")
    (apt / "pkgcache.bin").write_bytes(b"cache")
    (apt / "link").symlink_to(outside)  # an entry that is a link: removed, never followed
    (tree / "var" / "lib" / "apt").mkdir(parents=True)
    (tree / "var" / "lib" / "apt" / "lists").symlink_to(outside)  # the path itself a link: left
    (tree / "var" / "cache" / "debconf").mkdir()
    (tree / "var" / "cache" / "debconf" / "templates.dat-old").write_bytes(b"old")
    for path in _build._DROPPED:
        _build._empty(str(tree), path)
    assert apt.is_dir() and os.listdir(apt) == []
    assert not (tree / "var" / "cache" / "debconf" / "templates.dat-old").exists()
    assert (tree / "var" / "lib" / "apt" / "lists").is_symlink()
    assert sorted(os.listdir(outside)) == ["victim"]
