"""Root filesystems for ``--rootfs NAME``: built from a recipe, or imported from an image.

::

    _recipe.py   a recipe (rootfs/*.toml): parsed, validated, hashed
    _build.py    nsbox rootfs build: debootstrap minbase, apt, the recipe's files
    _oci.py      nsbox rootfs import: an OCI layout or `docker save` archive, digests verified
    _layers.py   one image layer applied to a root: whiteouts, no entry leaves the root
    _tree.py     the last pass: setuid bits, file capabilities, device nodes; size, packages
    _store.py    the data directory: list, remove, resolve a name, atomic commit
"""

from ._build import build as build_rootfs
from ._oci import import_image as import_rootfs
from ._store import StoredRoot
from ._store import list_roots as list_rootfs
from ._store import remove as remove_rootfs

__all__ = ["StoredRoot", "build_rootfs", "import_rootfs", "list_rootfs", "remove_rootfs"]
