"""``nsbox rootfs import``: image archives made by hand (tests/_images.py), unpacked into a data
directory of the test's own (NSBOX_DATA_DIR in tmp_path, for every test).

Each attack asserts the effect on the host (a file that must not appear, a link count that
must not change), not only that the import went through. These run as root and as an
ordinary user (who keeps u+rwx on folders and cannot give files away): ownership is only
checked as root.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nsbox._errors import ImageError, RootfsError, SpecError
from nsbox._rootfs import StoredRoot, import_rootfs, list_rootfs, remove_rootfs
from tests._images import (
    Archive,
    Entry,
    device,
    docker_archive,
    fifo,
    file,
    folder,
    hardlink,
    oci_archive,
    opaque,
    raw,
    sha256,
    symlink,
    whiteout,
)
from tests.conftest import require_root

AS_ROOT = os.geteuid() == 0


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never /var/lib/nsbox nor ~/.local/share/nsbox: a folder of this test."""
    directory = tmp_path / "data"
    monkeypatch.setenv("NSBOX_DATA_DIR", str(directory))
    return directory


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host folder next to the data directory, with a file an attack would like to reach."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "victim").write_text("host data\n")
    return directory


def _write(tmp_path: Path, archive: Archive) -> Path:
    return archive.write(tmp_path / f"image-{uuid.uuid4().hex[:8]}.tar")


def _import(tmp_path: Path, archive: Archive, name: str = "img", force: bool = False) -> StoredRoot:
    return import_rootfs(str(_write(tmp_path, archive)), name, force=force)


def _refused(root: StoredRoot) -> str:
    return "\n".join(root.manifest["image"]["refused"])


def _paths(top: Path) -> set[Path]:
    """Everything below ``top``, no symlink followed."""
    found = set()
    for folder_path, dirs, files in os.walk(top):
        found.update(Path(folder_path, name) for name in dirs + files)
    return found


def _tree(top: str) -> dict[str, tuple[object, ...]]:
    """A root as data, to compare two imports: type, content or target, permission bits."""
    described: dict[str, tuple[object, ...]] = {}
    for path in _paths(Path(top)):
        info = path.lstat()
        key = str(path.relative_to(top))
        if stat.S_ISLNK(info.st_mode):
            described[key] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            described[key] = ("folder", stat.S_IMODE(info.st_mode))
        else:
            described[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_nlink)
    return described


def _nothing_stored(data_dir: Path, name: str) -> None:
    """No root ``name`` and no staging folder left after a failed import."""
    entries = os.listdir(data_dir / "rootfs") if (data_dir / "rootfs").exists() else []
    assert name not in entries
    assert [e for e in entries if e.startswith(".staging")] == []


def _two_layers() -> list[list[Entry]]:
    """A small image with a bit of everything that survives an import."""
    return [
        [
            folder("etc"),
            file("etc/os-release", "ID=lower\n"),
            file("etc/doomed", "removed by the upper layer\n"),
            folder("usr/bin"),
            file("usr/bin/tool", "#!/bin/sh\necho tool\n", mode=0o755),
            hardlink("usr/bin/tool-alias", "usr/bin/tool"),
            folder("var/cache", mode=0o700),
            file("var/cache/old", "old"),
        ],
        [
            whiteout("etc/doomed"),
            symlink("etc/alias", "os-release"),
            symlink("bin", "usr/bin"),
            opaque("var/cache"),
            file("var/cache/new", "new"),
            file("etc/os-release", "ID=upper\n", mode=0o600),
        ],
    ]


# --- the acceptance test of the issue ------------------------------------------------------
def test_acceptance_oci_image_with_two_layers_a_whiteout_a_symlink_and_an_escaping_entry(
    tmp_path: Path, data_dir: Path
) -> None:
    image = _write(
        tmp_path,
        oci_archive(
            [
                [folder("etc"), file("etc/os-release", "ID=test\n"), file("etc/doomed", "lower layer\n")],
                [whiteout("etc/doomed"), symlink("etc/alias", "os-release"), file("../../escape", "pwned\n")],
            ]
        ),
    )
    # Where `../../escape` could land: the ancestors of the root, of tmp_path and of the cwd.
    places = {data_dir / "rootfs" / "accept" / "root", *(data_dir / "rootfs" / "accept" / "root").parents}
    places |= {Path.cwd(), *Path.cwd().parents}
    escapes_before = {p for p in places if os.path.lexists(p / "escape")}
    listings_before = {p: set(os.listdir(p)) for p in (tmp_path.parent, tmp_path.parent.parent)}
    before = _paths(tmp_path)

    root = import_rootfs(str(image), "accept")

    tree = Path(root.path)
    assert tree == data_dir / "rootfs" / "accept" / "root"
    assert not os.path.lexists(tree / "etc/doomed"), "the whiteout hides the lower layer's file"
    assert (tree / "etc/os-release").read_text() == "ID=test\n"
    assert os.readlink(tree / "etc/alias") == "os-release"
    assert (tree / "etc/alias").read_text() == "ID=test\n"
    assert root.manifest["image"]["refused_count"] == 1
    [refusal] = root.manifest["image"]["refused"]
    assert "'../../escape'" in refusal and "'..'" in refusal
    # Nothing written outside the root: the only new paths are the data directory's.
    assert all(p.is_relative_to(data_dir) for p in _paths(tmp_path) - before)
    assert [p for p in _paths(tmp_path) if p.name == "escape"] == []
    assert {p for p in places if os.path.lexists(p / "escape")} == escapes_before
    assert {p: set(os.listdir(p)) for p in listings_before} == listings_before


def test_an_imported_root_records_what_it_is(tmp_path: Path) -> None:
    archive = oci_archive(_two_layers())
    root = _import(tmp_path, archive)
    image = root.manifest["image"]
    assert image["format"] == "oci"
    assert image["digest"] == archive.digest
    assert image["layers"] == [sha256(archive.members[m]) for m in archive.layers]
    assert image["names"] == ["test:latest"]
    assert image["config"]["Cmd"] == ["/bin/sh"]
    assert (image["refused"], image["refused_count"], image["not_created"]) == ([], 0, [])
    assert root.manifest["size_bytes"] > 0
    assert root.manifest["packages"] == {}
    assert json.loads((Path(root.path).parent / "manifest.json").read_text()) == root.manifest
    assert [r.name for r in list_rootfs()] == ["img"]


# --- entries that try to leave the root -----------------------------------------------------
def test_an_absolute_name_is_refused_and_written_neither_to_the_host_nor_into_the_root(tmp_path: Path) -> None:
    name = f"/nsbox-abs-escape-{uuid.uuid4().hex}"
    try:
        root = _import(tmp_path, oci_archive([[file("fine", "ok"), file(name, "pwned")]]))
        assert not os.path.lexists(name)
    finally:
        if os.path.lexists(name):  # the bug this test is there for: clean the host up
            os.unlink(name)
    tree = Path(root.path)
    assert not os.path.lexists(tree / name.lstrip("/"))
    assert f"{name!r}: an absolute path" in _refused(root)
    assert (tree / "fine").read_text() == "ok"


@pytest.mark.parametrize(
    "attack",
    [
        file("link/pwned", "pwned"),
        folder("link/made-here"),
        whiteout("link/victim"),
        opaque("link"),
        hardlink("stolen", "link/victim"),
    ],
    ids=["file", "folder", "whiteout", "opaque-whiteout", "hard-link"],
)
@pytest.mark.parametrize("same_layer", [False, True], ids=["next-layer", "same-layer"])
def test_a_symlinked_parent_cannot_redirect_an_entry_out_of_the_root(
    tmp_path: Path, outside: Path, attack: Entry, same_layer: bool
) -> None:
    link = symlink("link", str(outside))  # absolute: kept, but never followed while unpacking
    layers = [[link, attack]] if same_layer else [[link], [attack]]
    root = _import(tmp_path, oci_archive(layers))
    assert os.listdir(outside) == ["victim"]
    assert (outside / "victim").read_text() == "host data\n"
    assert (outside / "victim").stat().st_nlink == 1
    assert "its parent link is " in _refused(root)  # refused: the effect above is what counts
    assert os.readlink(Path(root.path) / "link") == str(outside)
    assert not os.path.lexists(Path(root.path) / "stolen")


def test_a_symlink_climbing_out_is_refused_so_a_later_entry_below_it_stays_inside(
    tmp_path: Path, data_dir: Path
) -> None:
    root = _import(tmp_path, oci_archive([[symlink("link", "../../..")], [file("link/pwned", "pwned")]]))
    tree = Path(root.path)
    assert "'link': a symlink to '../../..', above the root" in _refused(root)
    assert not (tree / "link").is_symlink()
    assert (tree / "link/pwned").read_text() == "pwned"
    assert [p for p in _paths(data_dir) if p.name == "pwned"] == [tree / "link/pwned"]


@pytest.mark.parametrize("target", ["outside", "/etc/passwd", "../../x", "via-symlink"])
def test_a_hard_link_to_a_file_outside_the_root_is_refused(
    tmp_path: Path, data_dir: Path, outside: Path, target: str
) -> None:
    victim = outside / "victim"
    layers: list[list[Entry]] = [[file("fine", "ok")]]
    if target == "outside":
        linkname = str(victim)
    elif target == "/etc/passwd":
        linkname, victim = target, Path(target)
    elif target == "../../x":  # relative to the root: $NSBOX_DATA_DIR/rootfs/x
        victim = data_dir / "rootfs" / "x"
        victim.parent.mkdir(parents=True)
        victim.write_text("next to the roots\n")
        linkname = target
    else:
        layers[0].append(symlink("link", str(outside)))
        linkname = "link/victim"
    links_before = victim.stat().st_nlink
    root = _import(tmp_path, oci_archive([*layers, [hardlink("stolen", linkname)]]))
    assert not os.path.lexists(Path(root.path) / "stolen")
    assert "'stolen': " in _refused(root)
    assert victim.stat().st_nlink == links_before


def test_a_hard_link_to_a_symlink_links_the_symlink_not_what_it_points_to(tmp_path: Path, outside: Path) -> None:
    root = _import(tmp_path, oci_archive([[symlink("s", str(outside / "victim")), hardlink("h", "s")]]))
    tree = Path(root.path)
    assert os.readlink(tree / "h") == str(outside / "victim")
    assert os.path.samestat((tree / "h").lstat(), (tree / "s").lstat())
    assert (outside / "victim").stat().st_nlink == 1


def test_a_file_or_folder_replacing_a_symlink_does_not_write_through_it(tmp_path: Path, outside: Path) -> None:
    mode_before = stat.S_IMODE(outside.stat().st_mode)
    lower = [symlink("etc-passwd", str(outside / "victim")), symlink("d", str(outside))]
    upper = [file("etc-passwd", "root:x:0:0::/:/bin/sh\n"), folder("d", mode=0o777), file("d/new", "in the root")]
    root = _import(tmp_path, oci_archive([lower, upper]))
    tree = Path(root.path)
    assert (outside / "victim").read_text() == "host data\n"
    assert os.listdir(outside) == ["victim"]
    assert stat.S_IMODE(outside.stat().st_mode) == mode_before
    assert not (tree / "etc-passwd").is_symlink() and (tree / "etc-passwd").read_text().startswith("root:")
    assert not (tree / "d").is_symlink() and (tree / "d/new").read_text() == "in the root"


def test_a_relative_symlink_climbing_out_is_refused_an_absolute_one_is_kept(tmp_path: Path) -> None:
    root = _import(
        tmp_path,
        oci_archive(
            [
                [
                    folder("a"),
                    symlink("a/b", "../../../etc"),
                    symlink("a/up", "../etc"),
                    symlink("etc/alt", "/usr/bin/python3"),
                ]
            ]
        ),
    )
    tree = Path(root.path)
    assert not os.path.lexists(tree / "a/b")
    assert "'a/b': a symlink to '../../../etc', above the root" in _refused(root)
    assert os.readlink(tree / "a/up") == "../etc"
    assert os.readlink(tree / "etc/alt") == "/usr/bin/python3"
    assert root.manifest["image"]["refused_count"] == 1


def test_a_relative_symlink_cannot_climb_out_through_another_symlink(tmp_path: Path) -> None:
    """``here -> .`` is harmless and ``out -> here/here/../..`` climbs nowhere read as text, but
    the kernel resolves ``here`` first: on the host ``out`` is two folders above the root."""
    root = _import(tmp_path, oci_archive([[symlink("here", "."), symlink("out", "here/here/../..")]]))
    tree = Path(root.path)
    if os.path.lexists(tree / "out"):
        assert Path(os.path.realpath(tree / "out")).is_relative_to(os.path.realpath(tree)), (
            f"out -> here/here/../.. was kept and resolves to {os.path.realpath(tree / 'out')} on the host"
        )


def test_raw_names_with_dot_dot_anywhere_are_refused(tmp_path: Path, data_dir: Path) -> None:
    sneaky = [
        raw(tarfile.TarInfo("a/../../sneaky1"), b"x"),
        raw(tarfile.TarInfo("./../sneaky2"), b"x"),
        raw(tarfile.TarInfo("a/b/../../../../sneaky3"), b"x"),
    ]
    root = _import(tmp_path, oci_archive([[folder("a/b"), *sneaky]]))
    assert root.manifest["image"]["refused_count"] == 3
    assert [p for p in _paths(tmp_path) if p.name.startswith("sneaky")] == []


# --- whiteouts -----------------------------------------------------------------------------
def test_a_whiteout_removes_a_lower_file_or_folder_and_a_missing_name_is_no_error(tmp_path: Path) -> None:
    lower = [file("d/x/y", "deep"), file("d/keep", "kept"), file("f", "file")]
    upper = [whiteout("d/x"), whiteout("f"), whiteout("never-there"), file("d/added", "new")]
    tree = Path(_import(tmp_path, oci_archive([lower, upper])).path)
    assert sorted(os.listdir(tree)) == ["d"]
    assert sorted(os.listdir(tree / "d")) == ["added", "keep"]


@pytest.mark.parametrize("new_first", [False, True], ids=["marker-first", "new-entries-first"])
def test_an_opaque_whiteout_hides_the_lower_folder_but_keeps_its_own_layer(tmp_path: Path, new_first: bool) -> None:
    lower = [folder("d"), file("d/old1"), file("d/old2"), folder("d/sub"), file("d/sub/deep"), file("other", "x")]
    new = [folder("d/sub"), file("d/sub/new", "mine"), file("d/new", "new")]
    upper = [folder("d"), *new, opaque("d")] if new_first else [folder("d"), opaque("d"), *new]
    tree = Path(_import(tmp_path, oci_archive([lower, upper])).path)
    assert sorted(os.listdir(tree / "d")) == ["new", "sub"]
    assert os.listdir(tree / "d/sub") == ["new"]
    assert (tree / "d/sub/new").read_text() == "mine"
    assert (tree / "other").read_text() == "x"
    assert not os.path.lexists(tree / "d/.wh..wh..opq")


def test_an_opaque_whiteout_keeps_a_folder_its_own_layer_made_without_an_entry(tmp_path: Path) -> None:
    """``d/sub/new`` makes ``d/sub`` (no folder entry for it in the tar); an opaque whiteout of
    ``d`` that follows in the same layer hides the lower layers only, so ``d/sub/new`` stays."""
    tree = Path(_import(tmp_path, oci_archive([[file("d/old")], [file("d/sub/new", "mine"), opaque("d")]])).path)
    assert not os.path.lexists(tree / "d/old")
    assert (tree / "d/sub/new").read_text() == "mine"


def test_a_file_replacing_one_hard_link_leaves_the_other_name_alone(tmp_path: Path) -> None:
    lower = [file("a", "original"), hardlink("b", "a")]
    tree = Path(_import(tmp_path, oci_archive([lower, [file("b", "replaced")]])).path)
    assert (tree / "a").read_text() == "original"
    assert (tree / "b").read_text() == "replaced"
    assert (tree / "a").stat().st_nlink == 1


# --- what is not carried over ---------------------------------------------------------------
def test_setuid_and_setgid_bits_are_stripped_and_device_nodes_are_not_created(tmp_path: Path) -> None:
    layer = [
        file("bin/su", "#!/bin/sh\n", mode=0o4755),
        file("bin/sg", "#!/bin/sh\n", mode=0o2755),
        file("bin/plain", "#!/bin/sh\n", mode=0o755),
        folder("shared", mode=0o2775),
        device("dev/evil-null"),
        device("dev/evil-disk", 8, 0, block=True),
        fifo("run/pipe"),
    ]
    root = _import(tmp_path, oci_archive([layer]))
    tree = Path(root.path)
    assert stat.S_IMODE((tree / "bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "bin/sg").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "shared").stat().st_mode) == 0o755  # and no group write: see below
    assert {"bin/su", "bin/sg", "shared"} <= set(root.manifest["stripped_setuid"])
    assert "bin/plain" not in root.manifest["stripped_setuid"]
    not_created = root.manifest["image"]["not_created"]
    for path in ("dev/evil-null", "dev/evil-disk", "run/pipe"):
        assert not os.path.lexists(tree / path)
        assert any(line.startswith(f"{path}: ") for line in not_created), not_created
    assert [p for p in _paths(tree) if not (p.is_dir() or p.is_file())] == []


def test_no_other_host_user_can_change_an_imported_root(tmp_path: Path) -> None:
    """An image's uid 1234 would be host uid 1234, who could rewrite files every sandbox on
    that root sees; a 0777 folder or 0666 file, anyone. Owners are the importer's (root
    here, in CI), and only the owner may write."""
    lower = [
        folder("ro", mode=0o555),
        file("owned", "x", uid=1234, gid=5678),
        folder("usr/local/bin", mode=0o777, uid=1000),
        folder("var/tmp", mode=0o1777),
        file("etc/shared.conf", "x", mode=0o666),
        symlink("etc/owned-link", "shared.conf"),
    ]
    root = _import(tmp_path, oci_archive([lower, [file("ro/later", "filled by a later layer")]]))
    tree = Path(root.path)
    assert (tree / "ro/later").read_text() == "filled by a later layer"
    for path in _paths(tree):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid() if not AS_ROOT else 0), path
        if not path.is_symlink():
            assert info.st_mode & 0o022 == 0, path
    assert stat.S_IMODE((tree / "var/tmp").stat().st_mode) == 0o1755
    assert stat.S_IMODE((tree / "ro").stat().st_mode) == (0o555 if AS_ROOT else 0o755)


def test_packages_are_read_from_the_images_dpkg_status(tmp_path: Path) -> None:
    status = (
        "Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1\n\n"
        "Package: removed-one\nStatus: deinstall ok config-files\nVersion: 1.0\n"
    )
    root = _import(tmp_path, oci_archive([[file("var/lib/dpkg/status", status)]]))
    assert root.manifest["packages"] == {"python3": "3.11.2-1"}


def test_the_package_list_is_not_read_through_a_symlink_to_the_host(tmp_path: Path, outside: Path) -> None:
    """An absolute symlink is kept for the sandbox, where it means the image's own path; on the
    host it is the host's file, which the import must not read into the manifest."""
    (outside / "status").write_text("Package: host-secret\nStatus: install ok installed\nVersion: 42\n")
    root = _import(tmp_path, oci_archive([[symlink("var/lib/dpkg/status", str(outside / "status"))]]))
    assert root.manifest["packages"] == {}


# --- digests --------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("compress", [False, True], ids=["tar", "gzip"])
def test_a_tampered_layer_blob_is_refused_and_nothing_is_stored(
    tmp_path: Path, data_dir: Path, layer: int, compress: bool
) -> None:
    archive = oci_archive([[file("a", "hello one " * 100)], [file("b", "hello two " * 100)]], compress=compress)
    blob = archive.layers[layer]
    data = archive.members[blob]
    middle = len(data) // 2
    archive.members[blob] = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
    with pytest.raises(ImageError, match=r"digest|damaged|not a valid tar"):
        _import(tmp_path, archive)
    _nothing_stored(data_dir, "img")


def test_a_tampered_layer_is_reported_by_its_digest(tmp_path: Path, data_dir: Path) -> None:
    archive = oci_archive([[file("a", "hello")]])
    archive.tamper(archive.layers[0], b"hello", b"jello")
    digest = r"sha256:[0-9a-f]{64}"
    with pytest.raises(ImageError, match=rf"its digest is {digest}, not {digest} as the image says"):
        _import(tmp_path, archive)
    _nothing_stored(data_dir, "img")


def test_a_failed_import_keeps_the_root_that_was_there(tmp_path: Path, data_dir: Path) -> None:
    good = _import(tmp_path, oci_archive([[file("version", "1")]]))
    bad = oci_archive([[file("version", "2")]])
    bad.tamper(bad.layers[0], b"2", b"3")
    with pytest.raises(ImageError):
        _import(tmp_path, bad, force=True)
    assert (Path(good.path) / "version").read_text() == "1"
    assert list_rootfs()[0].manifest["image"]["digest"] == good.manifest["image"]["digest"]
    assert [e for e in os.listdir(data_dir / "rootfs") if e.startswith(".staging")] == []


@pytest.mark.parametrize("make", [oci_archive, docker_archive], ids=["oci", "docker"])
def test_a_wrong_diff_id_is_refused(tmp_path: Path, data_dir: Path, make: Callable[..., Archive]) -> None:
    layers = [[file("a", "one")], [file("b", "two")]]
    diff_ids = [sha256(b"not this layer"), sha256(b"nor this one")]
    with pytest.raises(ImageError, match=r"diff_ids"):
        _import(tmp_path, make(layers, diff_ids=diff_ids))
    _nothing_stored(data_dir, "img")


@pytest.mark.parametrize("part", ["manifest", "config"])
def test_a_tampered_manifest_or_config_is_refused(tmp_path: Path, data_dir: Path, part: str) -> None:
    archive = oci_archive([[file("a", "one")]])
    member = archive.manifest if part == "manifest" else archive.config
    archive.tamper(member, b'"schemaVersion": 2' if part == "manifest" else b"/bin/sh", b"")
    with pytest.raises(ImageError, match=r"its digest is"):
        _import(tmp_path, archive)
    _nothing_stored(data_dir, "img")


def test_a_tampered_docker_config_is_refused(tmp_path: Path, data_dir: Path) -> None:
    archive = docker_archive([[file("a", "one")]])
    archive.tamper(archive.config, b"/bin/sh", b"/bin/xx")
    with pytest.raises(ImageError, match=r"its digest is"):
        _import(tmp_path, archive)
    _nothing_stored(data_dir, "img")


# --- formats --------------------------------------------------------------------------------
def test_a_docker_save_archive_gives_the_same_tree_as_the_oci_layout(tmp_path: Path) -> None:
    from_oci = _import(tmp_path, oci_archive(_two_layers()), "from-oci")
    docker = docker_archive(_two_layers())
    from_docker = _import(tmp_path, docker, "from-docker")
    assert from_docker.manifest["image"]["format"] == "docker"
    assert from_docker.manifest["image"]["digest"] == docker.digest
    assert from_docker.manifest["image"]["names"] == ["test:latest"]
    tree = _tree(from_docker.path)
    assert tree == _tree(from_oci.path)
    assert tree["etc/os-release"] == ("file", b"ID=upper\n", 0o600, 1)
    assert tree["etc/alias"] == ("symlink", "os-release")
    assert tree["bin"] == ("symlink", "usr/bin")
    assert tree["usr/bin/tool-alias"] == ("file", b"#!/bin/sh\necho tool\n", 0o755, 2)
    assert "etc/doomed" not in tree
    assert {k for k in tree if k.startswith("var/cache/")} == {"var/cache/new"}


def test_gzip_compressed_layers_give_the_same_tree(tmp_path: Path) -> None:
    plain = _import(tmp_path, oci_archive(_two_layers()), "plain")
    archive = oci_archive(_two_layers(), compress=True)
    assert all(archive.members[m][:2] == b"\x1f\x8b" for m in archive.layers)
    compressed = _import(tmp_path, archive, "compressed")
    assert _tree(compressed.path) == _tree(plain.path)
    assert compressed.manifest["image"]["layers"] == [sha256(archive.members[m]) for m in archive.layers]


# --- the same image again -------------------------------------------------------------------
def test_importing_the_same_image_again_is_a_no_op_and_force_unpacks_it_again(tmp_path: Path) -> None:
    image = str(_write(tmp_path, oci_archive(_two_layers())))
    first = import_rootfs(image, "img")
    manifest = Path(first.path).parent / "manifest.json"
    inode = manifest.stat().st_ino
    tree = _tree(first.path)
    said: list[str] = []

    again = import_rootfs(image, "img", progress=said.append)
    assert again.up_to_date
    assert manifest.stat().st_ino == inode
    assert any("up to date" in line for line in said)

    forced = import_rootfs(image, "img", force=True)
    assert not forced.up_to_date
    assert manifest.stat().st_ino != inode
    assert forced.path == first.path
    assert _tree(forced.path) == tree


def test_another_image_under_the_same_name_replaces_the_root(tmp_path: Path, data_dir: Path) -> None:
    _import(tmp_path, oci_archive([[file("version", "1")]]))
    second = _import(tmp_path, oci_archive([[file("version", "2")]]))
    assert not second.up_to_date
    assert (Path(second.path) / "version").read_text() == "2"
    assert sorted(os.listdir(data_dir / "rootfs")) == [".img.lock", "img"]


def test_remove_and_bad_names(tmp_path: Path, data_dir: Path) -> None:
    _import(tmp_path, oci_archive([[file("a")]]))
    remove_rootfs("img")
    assert list_rootfs() == []
    assert not (data_dir / "rootfs" / "img").exists()
    with pytest.raises(RootfsError, match="no root named 'img'"):
        remove_rootfs("img")
    with pytest.raises(SpecError):
        _import(tmp_path, oci_archive([[file("a")]]), name="../up")


# --- the command line -----------------------------------------------------------------------
def _nsbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nsbox", *args], capture_output=True, text=True, timeout=120)


def test_cli_import_list_and_remove(tmp_path: Path, data_dir: Path) -> None:
    archive = oci_archive(_two_layers())
    image = str(_write(tmp_path, archive))

    imported = _nsbox("rootfs", "import", image, "cli-root")
    assert imported.returncode == 0, imported.stderr
    assert "imported cli-root" in imported.stderr
    listed = _nsbox("rootfs", "list")
    assert listed.returncode == 0 and "cli-root" in listed.stdout
    [entry] = json.loads(_nsbox("rootfs", "list", "--json").stdout)
    assert (entry["name"], entry["image"]["digest"]) == ("cli-root", archive.digest)
    assert entry["path"] == str(data_dir / "rootfs" / "cli-root" / "root")

    again = _nsbox("rootfs", "import", image, "cli-root")
    assert again.returncode == 0 and "up to date" in again.stderr

    removed = _nsbox("rootfs", "remove", "cli-root")
    assert removed.returncode == 0, removed.stderr
    assert not (data_dir / "rootfs" / "cli-root").exists()
    assert "no roots yet" in _nsbox("rootfs", "list").stdout
    gone = _nsbox("rootfs", "remove", "cli-root")
    assert gone.returncode == 1 and "no root named 'cli-root'" in gone.stderr


def test_cli_an_image_file_that_is_not_there(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-image.tar")
    done = _nsbox("rootfs", "import", missing, "img")
    assert done.returncode == 1
    assert f"no image file {missing!r}" in done.stderr


def test_cli_a_tar_that_is_not_an_image_and_a_file_that_is_not_a_tar(tmp_path: Path, data_dir: Path) -> None:
    not_an_image = tmp_path / "not-an-image.tar"
    with tarfile.open(not_an_image, "w") as tar:
        tar.add(__file__, arcname="test.py")
    done = _nsbox("rootfs", "import", str(not_an_image), "img")
    assert done.returncode == 1
    assert "neither an OCI image layout (index.json) nor a `docker save` archive" in done.stderr

    not_a_tar = tmp_path / "notes.txt"
    not_a_tar.write_text("just text\n" * 100)
    done = _nsbox("rootfs", "import", str(not_a_tar), "img")
    assert done.returncode == 1 and "is not a tar archive" in done.stderr
    _nothing_stored(data_dir, "img")


def test_cli_a_tampered_image_and_a_bad_name(tmp_path: Path, data_dir: Path) -> None:
    archive = oci_archive([[file("a", "hello")]])
    archive.tamper(archive.layers[0], b"hello", b"jello")
    done = _nsbox("rootfs", "import", str(_write(tmp_path, archive)), "img")
    assert done.returncode == 1 and "its digest is" in done.stderr
    _nothing_stored(data_dir, "img")
    bad = _nsbox("rootfs", "import", str(_write(tmp_path, oci_archive([[file("a")]]))), "Bad/Name")
    assert bad.returncode == 125 and "is not a root name" in bad.stderr


# --- a full disk ----------------------------------------------------------------------------
@pytest.fixture
def small_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MiB tmpfs as the data directory (mounting needs root)."""
    require_root("mounts a small tmpfs as the data directory")
    directory = tmp_path / "small"
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(directory)], check=True)
    try:
        monkeypatch.setenv("NSBOX_DATA_DIR", str(directory))
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_no_space_left_is_a_rootfs_error_and_the_staging_folder_is_gone(
    tmp_path: Path, no_leftovers: None, small_data_dir: Path
) -> None:
    image = _write(tmp_path, oci_archive([[file("big", os.urandom(4 << 20))]]))
    with pytest.raises(RootfsError, match="no space") as caught:
        import_rootfs(str(image), "big")
    assert not isinstance(caught.value, ImageError)
    assert "NSBOX_DATA_DIR" in caught.value.remedy
    assert sorted(os.listdir(small_data_dir / "rootfs")) == [".big.lock"]
