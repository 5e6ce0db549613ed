"""The host side of roots and filter caches, attacked with planted folders, links and FIFOs.

nsbox reads and writes, with the caller's rights, folders that someone else may be able to
write: a data directory in a shared place (``NSBOX_DATA_DIR=/srv/shared``), a tree a build's
maintainer scripts shaped, an image or recipe path that is a FIFO, a cache folder whose
parent another user controls. Each test plants what such a person could and checks the
effect on the host: a root planned from host folders, a host file removed, a call that never
returns, a filter compiled for another policy loaded.

Everything is made in this test's own folders (tmp_path); a call that hangs on a FIFO is
unblocked by opening the FIFO for writing, then the test fails. These run as root and as an
ordinary user; the tests that give a folder to another owner need root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nsbox._errors import RootfsError, SpecError
from nsbox._rootfs import _build, _oci, _store
from nsbox._rootfs._recipe import load_recipe
from nsbox._seccomp import _cache
from nsbox._seccomp._filter import compile_now
from nsbox._spec import Seccomp
from tests.conftest import call_within, require_root

STRANGER = 12345  #: a uid that is neither root nor the test's


def _within(call: Callable[[], Any], seconds: float, unblock: Callable[[], None]) -> tuple[Any, BaseException | None]:
    """``call``'s value and exception; fails the test if it has not returned in ``seconds``
    (after ``unblock``, so that no thread is left hanging)."""
    thread, value, error = call_within(call, seconds)
    if thread.is_alive():
        unblock()
        thread.join(5)
        pytest.fail(f"{call!r} hangs")
    return value, error


def _writer_for(fifo: Path) -> Callable[[], None]:
    """Opens ``fifo`` for writing and closes it: a reader blocked in open() gets EOF."""

    def unblock() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    return unblock


# --- the data directory -------------------------------------------------------------------
@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    (directory / "rootfs").mkdir(parents=True, mode=0o755)
    monkeypatch.setenv("NSBOX_DATA_DIR", str(directory))
    return directory


def _plant(folder: Path, root: Path | None = None, manifest: object = None) -> Path:
    """A root's folder: a manifest, and ``root`` a symlink to ``root`` (or a real folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest if manifest is not None else {"kind": "image"}))
    if root is None:
        (folder / "root").mkdir()
    else:
        (folder / "root").symlink_to(root)
    return folder


@pytest.mark.parametrize("level", ["data", "rootfs", "name"])
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_root_planted_in_a_folder_others_may_write_is_refused(data: Path, level: str, mode: int) -> None:
    """A shared data directory (or its rootfs/, or one root's folder) where another user
    plants NAME/manifest.json and NAME/root -> /: the sandbox's root would be the host's."""
    _plant(data / "rootfs" / "evil", root=Path("/"))
    {"data": data, "rootfs": data / "rootfs", "name": data / "rootfs" / "evil"}[level].chmod(mode)
    with pytest.raises(RootfsError, match="chmod go-w"):
        planned = _store.resolve("evil")
        pytest.fail(f"the planted root was used: {planned} -> {os.path.realpath(planned)}")
    with pytest.raises(RootfsError, match="chmod go-w"):
        _store.list_roots()


@pytest.mark.parametrize("level", ["data", "rootfs", "name"])
def test_a_root_in_a_folder_of_another_user_is_refused(data: Path, level: str) -> None:
    require_root("gives a folder to another owner (chown)")
    _plant(data / "rootfs" / "evil")
    os.chown({"data": data, "rootfs": data / "rootfs", "name": data / "rootfs" / "evil"}[level], STRANGER, STRANGER)
    with pytest.raises(RootfsError, match="chown"):
        _store.resolve("evil")


def test_a_symlinked_tree_is_refused(data: Path) -> None:
    """NAME/root -> / in a folder that is ours: the root is never a symlink's target."""
    _plant(data / "rootfs" / "evil", root=Path("/"))
    with pytest.raises(RootfsError, match="symbolic link"):
        planned = _store.resolve("evil")
        pytest.fail(f"a symlinked root was used: {planned} -> {os.path.realpath(planned)}")


def test_a_symlinked_manifest_is_not_followed(data: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"kind": "image"}))
    folder = data / "rootfs" / "evil"
    folder.mkdir()
    (folder / "root").mkdir()
    (folder / "manifest.json").symlink_to(elsewhere)
    with pytest.raises(RootfsError, match=r"manifest\.json"):
        planned = _store.resolve("evil")
        pytest.fail(f"a symlinked manifest was followed: {planned}")


def test_a_fifo_manifest_is_refused_without_hanging(data: Path) -> None:
    folder = data / "rootfs" / "evil"
    folder.mkdir()
    (folder / "root").mkdir()
    os.mkfifo(folder / "manifest.json")
    for call in (lambda: _store.resolve("evil"), _store.list_roots, lambda: _store.find("evil")):
        value, error = _within(call, 5, _writer_for(folder / "manifest.json"))
        assert isinstance(error, RootfsError) and "FIFO" in str(error), (value, error)


def test_holding_a_root_does_not_wait_forever_on_a_strangers_lock(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone who can open a root's folder can flock it: a sandbox start must not hang on
    that for ever (nsbox itself only locks a folder exclusively once it is replaced)."""
    monkeypatch.setattr(_store, "_HOLD_WAIT", 0.5, raising=False)
    folder = _plant(data / "rootfs" / "minimal")
    blocker_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(blocker_fd, fcntl.LOCK_EX)
    try:
        value, error = _within(
            lambda: _store.hold(str(folder / "root")), 5, lambda: fcntl.flock(blocker_fd, fcntl.LOCK_UN)
        )
    finally:
        os.close(blocker_fd)
    assert isinstance(error, RootfsError) and "locked" in str(error), (value, error)


# --- a build's tree -----------------------------------------------------------------------
@pytest.fixture
def host_folder(tmp_path: Path) -> Path:
    """A host folder with what _empty would remove, were it reached through a symlink."""
    host = tmp_path / "host"
    (host / "cache" / "apt").mkdir(parents=True)
    (host / "cache" / "apt" / "victim").write_text("host data\n")
    (host / "lib" / "apt" / "lists").mkdir(parents=True)
    (host / "lib" / "apt" / "lists" / "victim").write_text("host data\n")
    return host


@pytest.mark.parametrize("link", ["var", "var/cache"])
def test_dropping_apts_caches_follows_no_symlink_on_the_way(tmp_path: Path, host_folder: Path, link: str) -> None:
    """A maintainer script made tree/var (or tree/var/cache) a symlink to a host folder."""
    tree = tmp_path / "tree"
    (tree / link).parent.mkdir(parents=True, exist_ok=True)
    (tree / link).symlink_to(host_folder if link == "var" else host_folder / "cache")
    for path in _build._DROPPED:
        _build._empty(str(tree), path)
    assert (host_folder / "cache" / "apt" / "victim").read_text() == "host data\n"
    if link == "var":
        assert (host_folder / "lib" / "apt" / "lists" / "victim").read_text() == "host data\n"


# --- an image or a recipe that is no regular file -----------------------------------------
def test_importing_a_fifo_is_refused_without_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBOX_DATA_DIR", str(tmp_path / "data"))
    fifo = tmp_path / "image.tar"
    os.mkfifo(fifo)
    value, error = _within(lambda: _oci.import_image(str(fifo), "app"), 5, _writer_for(fifo))
    assert isinstance(error, RootfsError) and "not a regular file" in str(error), (value, error)


def test_importing_a_device_is_refused_without_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBOX_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "image.tar").symlink_to("/dev/null")  # the caller's own link: followed, then refused
    with pytest.raises(RootfsError, match="not a regular file"):
        _oci.import_image(str(tmp_path / "image.tar"), "app")


def test_a_fifo_recipe_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "minimal.toml"
    os.mkfifo(fifo)
    value, error = _within(lambda: load_recipe(fifo), 5, _writer_for(fifo))
    assert isinstance(error, SpecError) and "not a regular file" in str(error), (value, error)


# --- the seccomp filter cache -------------------------------------------------------------
#: BPF_RET | BPF_K, SECCOMP_RET_ALLOW: a filter that allows everything.
ALLOW_ALL = b"\x06\x00\x00\x00\x00\x00\xff\x7f"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _cache.compile_filters.cache_clear()
    yield tmp_path / "nsbox"
    _cache.compile_filters.cache_clear()


def test_a_filter_compiled_for_another_policy_is_not_loaded(cache: Path) -> None:
    """Our own file, intact, but made for a weaker policy and put at this policy's name."""
    weaker = Seccomp(allow=("ptrace", "bpf", "unshare", "mount"))
    strict = Seccomp()
    compiled_weaker = _cache.compile_filters(weaker)
    weaker_path = Path(_cache._cache_path(weaker) or "")
    os.rename(weaker_path, _cache._cache_path(strict) or "")
    _cache.compile_filters.cache_clear()
    loaded = _cache.compile_filters(strict)
    assert loaded != compiled_weaker
    assert loaded == compile_now(strict)


def test_a_fifo_in_the_cache_is_refused_without_hanging(cache: Path) -> None:
    path = Path(_cache._cache_path(Seccomp()) or "")
    cache.mkdir(mode=0o700)
    os.mkfifo(path, 0o600)
    value, error = _within(lambda: _cache._read(str(path)), 5, _writer_for(path))
    assert error is None and value is None, (value, error)


class _SwapAtFirstOpen:
    """``os`` for _cache, but the first ``open`` is preceded by ``swap()``: a folder swapped
    exactly between a check of it and the first use, deterministically."""

    def __init__(self, swap: Callable[[], None]) -> None:
        self._swap: Callable[[], None] | None = swap

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, *args: Any, **kwargs: Any) -> int:
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        return os.open(*args, **kwargs)


def test_a_cache_folder_swapped_after_its_check_is_not_used(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever controls the cache folder's parent swaps in a folder of their own, holding a
    FIFO at the filter's name, between the folder's check and the open of the file."""
    path = Path(_cache._cache_path(Seccomp()) or "")
    cache.mkdir(mode=0o700)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.mkfifo(theirs / path.name, 0o600)
    if os.geteuid() == 0:
        os.chown(theirs, STRANGER, STRANGER)

    def swap() -> None:
        os.rename(cache, tmp_path / "ours")
        os.rename(theirs, cache)

    monkeypatch.setattr(_cache, "os", _SwapAtFirstOpen(swap))
    value, error = _within(lambda: _cache._read(str(path)), 5, _writer_for(path))
    assert error is None and value is None, (value, error)
