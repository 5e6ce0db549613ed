"""``nsbox rootfs import`` against archives that try to exhaust it, crash it or trip its
bookkeeping (a review's findings, each shown to fail before its fix)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from nsbox._errors import ImageError
from nsbox._rootfs import _store, import_rootfs
from tests._images import Archive, file, folder, hardlink, layer_tar, oci_archive, raw, sha256, symlink, whiteout


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    monkeypatch.setenv("NSBOX_DATA_DIR", str(directory))
    return directory


def _import(tmp_path: Path, archive: Archive, name: str = "img") -> _store.StoredRoot:
    return import_rootfs(str(archive.write(tmp_path / f"image-{uuid.uuid4().hex[:8]}.tar")), name)


def _blob_name(data: bytes) -> str:
    return "blobs/sha256/" + sha256(data).removeprefix("sha256:")


def _nested(archive: Archive, depth: int, fan_out: int) -> Archive:
    """The image's manifest behind ``depth`` levels of indexes, each listing its child
    ``fan_out`` times: walked naively, fan_out**depth visits."""
    descriptor = json.loads(archive.members["index.json"])["manifests"][0]
    for _level in range(depth):
        index = json.dumps({"schemaVersion": 2, "manifests": [descriptor] * fan_out}).encode()
        archive.members[_blob_name(index)] = index
        descriptor = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha256(index),
            "size": len(index),
        }
    archive.members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode()
    return archive


def test_nested_indexes_are_walked_once_each_and_only_so_deep(tmp_path: Path) -> None:
    started = time.monotonic()
    root = _import(tmp_path, _nested(oci_archive([[file("ok", "1")]]), depth=3, fan_out=50))
    assert (Path(root.path) / "ok").read_text() == "1"
    assert time.monotonic() - started < 30  # 50**3 walks would take minutes; this is no benchmark
    with pytest.raises(ImageError, match="nested more than 4 deep"):
        _import(tmp_path, _nested(oci_archive([[file("ok", "1")]]), depth=6, fan_out=10), "deep")


def test_one_image_under_two_tags_is_one_image(tmp_path: Path) -> None:
    archive = oci_archive([[file("ok", "1")]])
    index = json.loads(archive.members["index.json"])
    second = {**index["manifests"][0], "annotations": {"org.opencontainers.image.ref.name": "test:v1"}}
    index["manifests"].append(second)
    archive.members["index.json"] = json.dumps(index).encode()
    root = _import(tmp_path, archive)
    assert root.manifest["image"]["names"] == ["test:latest", "test:v1"]


def test_json_nested_deeper_than_the_parser_goes_is_an_image_error(tmp_path: Path) -> None:
    archive = oci_archive([[file("ok", "1")]])
    archive.members["index.json"] = b"[" * 100_000
    with pytest.raises(ImageError, match="not JSON nsbox can read"):
        _import(tmp_path, archive)


def _long_name_entries() -> list[tarfile.TarInfo]:
    deep = tarfile.TarInfo("/".join(["d"] * 300) + "/f")
    long = tarfile.TarInfo("x" * 300)
    nul = tarfile.TarInfo("a")
    nul.pax_headers = {"path": "a\0b"}  # a PAX name may hold a NUL, a ustar one ends there
    empty = tarfile.TarInfo("empty-link")
    empty.type, empty.linkname = tarfile.SYMTYPE, ""
    return [deep, long, nul, empty]


def test_odd_names_are_refused_one_by_one_not_a_crash(tmp_path: Path) -> None:
    layer = [raw(info, b"") for info in _long_name_entries()] + [file("kept", "yes")]
    tar = layer_tar(layer)
    root = _import(tmp_path, oci_archive([tar]))
    assert (Path(root.path) / "kept").read_text() == "yes"
    assert root.manifest["image"]["refused_count"] == 4, root.manifest["image"]["refused"]
    assert not (Path(root.path) / "d").exists()


def test_a_sparse_file_is_refused_not_written_at_its_declared_size(tmp_path: Path) -> None:
    sparse = tarfile.TarInfo("huge")
    sparse.type = tarfile.GNUTYPE_SPARSE
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(sparse)
        info = tarfile.TarInfo("kept")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"yes"))
    root = _import(tmp_path, oci_archive([buffer.getvalue()]))
    assert not (Path(root.path) / "huge").exists()
    assert (Path(root.path) / "kept").read_text() == "yes"
    assert any("sparse" in line for line in root.manifest["image"]["refused"])


def test_a_layer_with_data_after_a_bad_header_is_refused_not_cut_short(tmp_path: Path) -> None:
    whole = layer_tar([file("first", "1"), file("second", "2")])
    second_header = whole.index(b"second")
    damaged = whole[:second_header] + b"\xff" * 100 + whole[second_header + 100 :]
    with pytest.raises(ImageError, match="damaged or truncated"):
        _import(tmp_path, oci_archive([damaged]))
    assert "img" not in os.listdir(tmp_path / "data" / "rootfs")


def test_a_hard_link_to_a_relative_symlink_is_checked_where_it_lands(tmp_path: Path) -> None:
    deep = "a/b/c/d/e/f/g/h"
    layer = [folder(deep), symlink(f"{deep}/up", "../../../../../../../.."), hardlink("esc", f"{deep}/up")]
    root = _import(tmp_path, oci_archive([layer]))
    tree = Path(root.path)
    assert os.readlink(tree / deep / "up") == "../../../../../../../.."  # inside, where it is
    assert not os.path.lexists(tree / "esc")  # at the top it would be the host's /
    assert "'esc'" in "\n".join(root.manifest["image"]["refused"])


def test_a_whiteout_in_a_missing_folder_makes_no_folder(tmp_path: Path) -> None:
    root = _import(tmp_path, oci_archive([[file("kept", "1")], [whiteout("no/such/dir/x")]]))
    assert not (Path(root.path) / "no").exists()


def test_the_tree_is_out_of_other_users_reach_while_it_is_written(tmp_path: Path) -> None:
    modes = []

    def look(_line: str) -> None:
        modes.extend(
            stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data" / "rootfs").glob(".staging+*") if p.is_dir()
        )

    archive = oci_archive([[file("ok", "1")]])
    path = archive.write(tmp_path / "image.tar")
    root = import_rootfs(str(path), "img", progress=look)
    assert modes and set(modes) == {0o700}
    assert stat.S_IMODE(Path(root.path).parent.stat().st_mode) == 0o755


def test_writing_one_name_leaves_another_names_staging_alone(tmp_path: Path) -> None:
    """``foo`` and ``foo-bar``: the cleanup of foo's leftovers must not take foo-bar's
    build in progress."""
    with _store.staging("foo-bar") as other:
        Path(other.tree, "half-written").write_text("mine")
        _import(tmp_path, oci_archive([[file("ok", "1")]]), "foo")
        assert Path(other.tree, "half-written").read_text() == "mine"
        other.commit({"kind": "test"})
    assert {r.name for r in _store.list_roots()} == {"foo", "foo-bar"}


def test_replacing_a_root_swaps_it_in_one_step(tmp_path: Path) -> None:
    first = _import(tmp_path, oci_archive([[file("v", "1")]]))
    folder_before = Path(first.path).parent
    second = _import(tmp_path, oci_archive([[file("v", "2")]]))
    assert Path(second.path, "v").read_text() == "2"
    assert Path(second.path).parent == folder_before
    assert [e for e in os.listdir(tmp_path / "data" / "rootfs") if e.startswith(".staging")] == []
