"""Recipes (rootfs/*.toml) and how ``--rootfs NAME|DIR`` finds a root: no build, no root."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import nsbox
from nsbox._rootfs import _build
from nsbox._rootfs._recipe import RECIPES_DIR, find_recipe, load_recipe
from tests.conftest import NSBOX_CLI


def _recipe(tmp_path: Path, text: str, name: str = "r") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_the_shipped_recipes_load_and_name_their_packages() -> None:
    minimal = load_recipe(find_recipe("minimal"))
    assert minimal.suite == "bookworm" and minimal.packages == ("python3",)
    assert minimal.security_mirror == "http://deb.debian.org/debian-security"  # security updates at build time
    python = load_recipe(find_recipe("python"))
    for package in ("python3-pip", "python3-venv", "python3-numpy", "python3-pandas", "python3-matplotlib"):
        assert package in python.packages
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.toml")) == ["minimal", "python"]


def test_an_unknown_key_is_refused_by_name_with_a_suggestion(tmp_path: Path) -> None:
    path = _recipe(tmp_path, 'suite = "bookworm"\npakages = ["python3"]\n')
    with pytest.raises(nsbox.SpecError, match="unknown recipe key 'pakages' \\(did you mean 'packages'\\?\\)"):
        load_recipe(path)


def test_the_cli_says_so_too_and_exits_125(tmp_path: Path) -> None:
    path = _recipe(tmp_path, 'suite = "bookworm"\nmirrorr = "http://x"\n')
    out = subprocess.run([NSBOX_CLI, "rootfs", "build", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 125
    assert (
        "unknown recipe key 'mirrorr'" in out.stderr
        and "the keys are: description, suite, mirror, security_mirror" in out.stderr
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('packages = ["python3"]\n', "suite: missing"),
        ('suite = "bookworm"\npackages = "python3"\n', "must be a list"),
        ('suite = "bookworm"\npackages = ["--allow-unauthenticated"]\n', "not a valid packages entry"),
        ('suite = "bookworm"\npackages = ["apt-"]\n', "not a valid packages entry"),  # apt: "remove apt"
        ('suite = "bookworm"\n[files]\n"etc/." = "x"\n', "no '..' or '.'"),
        ('suite = "bookworm"\nmirror = "file:///etc"\n', "not a valid mirror entry"),
        ('suite = "bookworm"\nsecurity_mirror = "x; rm -rf /"\n', "not a valid security_mirror entry"),
        ('suite = "../x"\n', "not a valid suite entry"),
        ('suite = "bookworm"\n[files]\n"../../etc/passwd" = "x"\n', "no '..'"),
        ('suite = "bookworm"\nspace = [1]\n', "not a size"),
        ("suite = \n", "not valid TOML"),
    ],
)
def test_bad_values_are_refused_before_anything_runs(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(nsbox.SpecError, match=complaint.replace("(", "\\(")):
        load_recipe(_recipe(tmp_path, text))


def test_the_hash_follows_what_is_built_not_the_description(tmp_path: Path) -> None:
    base = 'suite = "bookworm"\npackages = ["python3"]\n'
    first = load_recipe(_recipe(tmp_path, base + 'description = "a"\n', "one")).sha256
    assert load_recipe(_recipe(tmp_path, base + 'description = "b"\n', "two")).sha256 == first
    assert load_recipe(_recipe(tmp_path, base.replace("python3", "python3-numpy"), "three")).sha256 != first
    assert load_recipe(_recipe(tmp_path, base + '[files]\n"etc/x" = "1"\n', "four")).sha256 != first
    security = 'security_mirror = "http://deb.debian.org/debian-security"\n'
    assert load_recipe(_recipe(tmp_path, base + security, "five")).sha256 != first


def test_an_unknown_recipe_name_lists_the_ones_there_are() -> None:
    with pytest.raises(nsbox.SpecError, match=r"no recipe named 'nope'.*there are: minimal, python"):
        find_recipe("nope")


def test_building_as_an_ordinary_user_says_what_to_do_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(nsbox.NsboxError, match="needs root") as caught:
        _build._tools()
    assert "nsbox rootfs import" in str(caught.value)


def test_rootfs_names_are_looked_up_and_folders_need_a_slash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBOX_DATA_DIR", str(tmp_path / "data"))
    tree = tmp_path / "data" / "rootfs" / "tiny" / "root"
    (tree / "etc").mkdir(parents=True)
    (tree.parent / "manifest.json").write_text(json.dumps({"kind": "image"}))
    assert nsbox.SandboxSpec(rootfs="tiny").rootfs == str(tree)
    monkeypatch.chdir(tmp_path / "data" / "rootfs")
    with pytest.raises(nsbox.SpecError, match="no root named 'tiny2'"):
        nsbox.SandboxSpec(rootfs="tiny2")
    (tmp_path / "data" / "rootfs" / "plain").mkdir()
    with pytest.raises(nsbox.SpecError, match=re.escape("for the folder 'plain' here, write ./plain")):
        nsbox.SandboxSpec(rootfs="plain")
    assert nsbox.SandboxSpec(rootfs="./plain").rootfs == str(tmp_path / "data" / "rootfs" / "plain")


def test_a_folder_without_a_manifest_is_not_a_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a half-written build would look like is never used."""
    monkeypatch.setenv("NSBOX_DATA_DIR", str(tmp_path))
    (tmp_path / "rootfs" / "half" / "root").mkdir(parents=True)
    with pytest.raises(nsbox.SpecError, match="no root named 'half'"):
        nsbox.SandboxSpec(rootfs="half")


def test_bad_root_names_are_refused() -> None:
    for name in ("", "Upper", ".hidden", "a" * 64, "x y"):
        with pytest.raises(nsbox.SpecError, match="not a root name"):
            nsbox.remove_rootfs(name)
