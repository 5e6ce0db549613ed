"""The on-disk cache of compiled seccomp filters: used only when it is ours and intact.

What is loaded as the payload's filter must never be somebody else's choice: each test
plants a permissive program (one BPF instruction: return ALLOW) where the cache would be,
in a way the cache must refuse, and checks that the real policy is compiled instead."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsbox._seccomp import _cache
from nsbox._seccomp._filter import compile_now
from nsbox._spec import Seccomp
from tests.conftest import require_root

#: BPF_RET | BPF_K, SECCOMP_RET_ALLOW: a filter that allows everything.
ALLOW_ALL = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _cache.compile_filters.cache_clear()
    yield tmp_path / "nsbox"
    _cache.compile_filters.cache_clear()


def _planted(policy: Seccomp) -> Path:
    """The cache file of ``policy``, written with a permissive program but valid framing."""
    path = Path(_cache._cache_path(policy) or "")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(_cache._frame(path.name, (ALLOW_ALL,)))  # its own key: only the program is wrong
    path.chmod(0o600)
    return path


def test_a_compile_is_written_once_and_read_back(cache: Path) -> None:
    policy = Seccomp(refuse=("getpid",))
    programs = _cache.compile_filters(policy)
    assert programs == compile_now(policy)
    files = list(cache.iterdir())
    assert len(files) == 1
    assert cache.stat().st_mode & 0o777 == 0o700
    assert files[0].stat().st_mode & 0o777 == 0o600
    _cache.compile_filters.cache_clear()
    assert _cache._read(str(files[0])) == programs


def test_a_new_process_loads_the_cache_without_libseccomp(cache: Path) -> None:
    _cache.compile_filters(Seccomp())
    code = (
        "import sys; from nsbox._seccomp import compile_filters; from nsbox._spec import Seccomp; "
        "n = len(compile_filters(Seccomp())); print(n, 'pyseccomp' in sys.modules)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "False"]


def test_premise_a_planted_file_that_is_ours_is_what_gets_loaded(cache: Path) -> None:
    """Why ownership matters: a file we own and nobody else may write is trusted as is."""
    _planted(Seccomp())
    assert _cache.compile_filters(Seccomp()) == (ALLOW_ALL,)


def test_a_file_of_another_owner_is_not_loaded(cache: Path) -> None:
    require_root("gives the file to another owner (chown)")
    path = _planted(Seccomp())
    os.chown(path, 12345, 12345)
    assert _cache.compile_filters(Seccomp()) == compile_now(Seccomp())


def test_a_file_others_may_write_is_not_loaded(cache: Path) -> None:
    _planted(Seccomp()).chmod(0o622)
    assert _cache.compile_filters(Seccomp()) == compile_now(Seccomp())


def test_a_directory_others_may_write_is_neither_read_nor_written(cache: Path) -> None:
    path = _planted(Seccomp())
    cache.chmod(0o777)
    assert _cache.compile_filters(Seccomp()) == compile_now(Seccomp())
    assert path.read_bytes() == _cache._frame(path.name, (ALLOW_ALL,))  # left as it was: not rewritten either


def test_a_symlink_is_not_followed(cache: Path, tmp_path: Path) -> None:
    path = Path(_cache._cache_path(Seccomp()) or "")
    elsewhere = tmp_path / "elsewhere.bpf"
    elsewhere.write_bytes(_cache._frame(path.name, (ALLOW_ALL,)))
    elsewhere.chmod(0o600)
    path.parent.mkdir(mode=0o700, parents=True)
    path.symlink_to(elsewhere)
    assert _cache.compile_filters(Seccomp()) == compile_now(Seccomp())


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],  # cut short
        lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:],  # one bit flipped
        lambda data: b"nsbox-bpf 1\n" + data[12:],  # another format (the one before the key)
        lambda data: b"",
    ],
)
def test_a_damaged_file_is_compiled_anew(cache: Path, damage: object) -> None:
    path = _planted(Seccomp())
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert _cache.compile_filters(Seccomp()) == compile_now(Seccomp())


def test_bad_framing_is_refused_even_with_a_good_checksum() -> None:
    key = "seccomp-0123.bpf"
    for programs in ((b"\x00" * 7,), (b"",), (b"\x00" * 8,) * 5, (b"\x00" * (4096 * 8 + 8),)):
        body = _cache._MAGIC + key.encode() + b"\n" + b"".join(struct.pack(">I", len(p)) + p for p in programs)
        assert _cache._unframe(body + hashlib.sha256(body).digest(), key) is None
    body = _cache._MAGIC + key.encode() + b"\n" + struct.pack(">I", 8) + ALLOW_ALL
    assert _cache._unframe(body + hashlib.sha256(body).digest(), key) == (ALLOW_ALL,)  # the premise


def test_every_input_of_the_compile_is_in_the_key(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {_cache._cache_path(Seccomp()), _cache._cache_path(Seccomp(allow=("ptrace",)))}
    keys.add(_cache._cache_path(Seccomp(unknown_errno="EPERM")))
    monkeypatch.setattr(_cache, "_libseccomp_identity", lambda: "another libseccomp")
    keys.add(_cache._cache_path(Seccomp()))
    assert len(keys) == 4


def test_no_library_found_means_no_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cache, "_libseccomp_identity", lambda: None)
    assert _cache.compile_filters(Seccomp()) == compile_now(Seccomp())
    assert not cache.exists()
