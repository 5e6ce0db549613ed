"""Recipes: a TOML file saying which Debian root to build (``rootfs/*.toml``).

::

    description = "..."                       # free text
    suite = "bookworm"                        # the Debian release debootstrap installs
    mirror = "http://deb.debian.org/debian"   # optional; the Release file is always verified
    security_mirror = "http://deb.debian.org/debian-security"  # optional: SUITE-security updates
    components = ["main"]                     # optional
    packages = ["python3"]                    # installed with apt after the minbase system
    space = "1G"                              # free space the build needs (checked first)
    [files]                                   # optional: files written into the root
    "etc/motd" = "hello\\n"

An unknown key is an error that names it (a typo must not build a different root). The
recipe's hash, over its parsed content and the build format, decides whether a root is up
to date. A recipe file is the caller's (a symlink to it is followed), read only if it is a
regular file of at most ``_RECIPE_LIMIT`` bytes (_hostfiles.read_host_file: a FIFO or a
device is refused without being opened).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._errors import SecurityError, SpecError
from .._hostfiles import read_host_file
from .._values import parse_size

#: Bump when the build's steps change what a recipe produces: every root is then rebuilt.
BUILD_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYS = ("description", "suite", "mirror", "security_mirror", "components", "packages", "space", "files")
_SUITE = re.compile(r"[a-z][a-z0-9-]{1,31}")
#: Not ending in '-' or '+': apt-get install reads "name-" as "remove name", "name+" as install.
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,98}[a-z0-9.](=[A-Za-z0-9.+~:-]{1,100})?")
_COMPONENT = re.compile(r"[a-z][a-z0-9-]{1,31}")
_MIRROR = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
#: The checkout's rootfs/ folder, where `nsbox rootfs build NAME` looks for NAME.toml.
RECIPES_DIR = Path(__file__).resolve().parents[2] / "rootfs"
_RECIPE_LIMIT = 1 << 20  #: bytes; the shipped recipes are under 1 KB


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  #: the file it was read from
    suite: str
    packages: tuple[str, ...]
    mirror: str = DEFAULT_MIRROR
    security_mirror: str = ""  #: where SUITE-security is; "" = no security updates
    components: tuple[str, ...] = ("main",)
    space: int = 1 << 30
    files: tuple[tuple[str, str], ...] = ()
    description: str = ""

    @property
    def sha256(self) -> str:
        content = asdict(self)
        del content["name"], content["source"], content["description"]
        content["build_format"] = BUILD_FORMAT
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "suite": self.suite,
            "mirror": self.mirror,
            "security_mirror": self.security_mirror,
            "components": list(self.components),
            "packages": list(self.packages),
            "files": [path for path, _ in self.files],
        }


def find_recipe(recipe: str) -> Path:
    """A path to a .toml file, or the name of one in the checkout's rootfs/ folder."""
    if "/" in recipe or recipe.endswith(".toml"):
        path = Path(recipe)
        if not path.is_file():
            raise SpecError("RECIPE", f"no recipe file {recipe!r}")
        return path
    path = RECIPES_DIR / f"{recipe}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.toml")) if RECIPES_DIR.is_dir() else []
        raise SpecError(
            "RECIPE",
            f"no recipe named {recipe!r} in {RECIPES_DIR}"
            + (f" (there are: {', '.join(known)})" if known else "")
            + "; give the path of a .toml file",
        )
    return path


def load_recipe(path: Path) -> Recipe:
    where = str(path)
    try:
        data = tomllib.loads(read_host_file(path, _RECIPE_LIMIT, what=where, follow_symlinks=True).decode("utf-8"))
    except SecurityError:
        raise SpecError(where, "not a regular file: give the path of a .toml file") from None
    except OSError as exc:
        raise SpecError(where, f"cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(where, f"not valid TOML: {exc}") from None
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise SpecError(
                f"{where}: {key}",
                f"unknown recipe key {key!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; the keys are: {', '.join(KEYS)}",
            )
    if "suite" not in data:
        raise SpecError(f"{where}: suite", 'missing: the Debian release to build, e.g. suite = "bookworm"')
    suite = _matching(where, "suite", data["suite"], _SUITE)
    mirror = _matching(where, "mirror", data.get("mirror", DEFAULT_MIRROR), _MIRROR)
    return Recipe(
        name=path.stem,
        source=os.path.abspath(where),
        suite=suite,
        mirror=mirror.rstrip("/"),
        security_mirror=(
            _matching(where, "security_mirror", data["security_mirror"], _MIRROR).rstrip("/")
            if "security_mirror" in data
            else ""
        ),
        packages=tuple(_matching(where, "packages", p, _PACKAGE) for p in _list(where, "packages", data, [])),
        components=tuple(
            _matching(where, "components", c, _COMPONENT) for c in _list(where, "components", data, ["main"])
        ),
        space=parse_size(_size(where, data.get("space", "1G")), f"{where}: space"),
        files=_files(where, data.get("files", {})),
        description=str(data.get("description", "")),
    )


def _matching(where: str, key: str, value: object, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SpecError(f"{where}: {key}", f"{value!r} is not a valid {key} entry")
    return value


def _size(where: str, value: object) -> int | str:
    if not isinstance(value, int | str):
        raise SpecError(f"{where}: space", f'{value!r} is not a size such as "1G"')
    return value


def _list(where: str, key: str, data: dict[str, Any], default: list[str]) -> list[object]:
    value = data.get(key, default)
    if not isinstance(value, list):
        raise SpecError(f"{where}: {key}", f"must be a list of strings, not {value!r}")
    return value


def _files(where: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: files", 'must be a table of "path" = "content"')
    files = []
    for path, content in sorted(value.items()):
        parts = path.strip("/").split("/")
        if not path or {"..", ".", ""} & set(parts) or not isinstance(content, str):
            raise SpecError(f"{where}: files", f"{path!r}: give a path inside the root (no '..' or '.') and a string")
        files.append(("/".join(parts), content))
    return tuple(files)
