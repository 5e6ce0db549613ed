"""``nsbox rootfs import IMAGE.tar NAME``: a local container image as a root, no daemon.

Two archive formats, told apart by what they hold:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``: ``skopeo copy
  ... oci-archive:``, ``podman save --format oci-archive``, ``docker save`` since 25);
- ``docker save``'s older format (``manifest.json`` naming ``<id>/layer.tar`` files and a
  ``<sha256>.json`` config).

Every blob is checked against its digest while it is read: the index, manifest and config
before they are used (bounded in size: they are JSON from the archive, untrusted), each
layer as it is applied, compressed (the descriptor's digest and size) and uncompressed (the
config's ``rootfs.diff_ids``). The root is only committed when all of them matched; a
mismatch discards everything written (the staging folder, _store.py). Layers are applied by
_layers.py, which refuses entries that would leave the root.

The archive is the caller's file (a symlink to it is followed), but only a regular file is
read: it is opened O_PATH (which opens nothing: no FIFO blocks, no device acts), checked
with fstat, and then reopened through that fd.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import platform
import posixpath
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .._errors import ImageError, RootfsError
from .._hostfiles import NotRegularFile, reopen_regular
from . import _store
from ._layers import LayerWriter

Progress = Callable[[str], None]
_JSON_LIMIT = 4 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
_REF_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")
_INDEX_DEPTH = 4
_INDEX_ENTRIES = 1000
#: Bump when unpacking changes what an image gives: roots imported before are unpacked again.
IMPORT_FORMAT = 1
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class Layer:
    path: str  #: its member in the archive
    digest: str | None  #: of the blob as stored (OCI descriptors; None in the old docker format)
    size: int | None
    diff_id: str  #: of the uncompressed tar (the config's rootfs.diff_ids)


@dataclass(frozen=True)
class Image:
    format: str  #: "oci" or "docker"
    digest: str  #: the manifest's (OCI) or the config's (docker: the image id); what "unchanged" means
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    names: tuple[str, ...]  #: tags or reference names, when the archive gives them


def import_image(image: str, name: str, force: bool = False, progress: Progress | None = None) -> _store.StoredRoot:
    say = progress or (lambda _line: None)
    name = _store.check_name(name)
    started = time.monotonic()
    with _open_archive(image) as archive:
        found = read_image(archive)
        identity = {"digest": found.digest, "import_format": IMPORT_FORMAT}
        if not force and (same := _store.unchanged(name, "image", identity)):
            say(f"{name}: up to date (image {found.digest[:19]}), nothing to do")
            return same
        with _store.staging(name) as stage:
            writer = LayerWriter(stage.tree)
            try:
                for number, layer in enumerate(found.layers, 1):
                    say(f"[{number}/{len(found.layers)}] layer {layer.diff_id[:19]}")
                    _apply_verified(archive, layer, writer)
            except OSError as exc:
                raise _write_failure(exc, stage.directory) from exc
            finally:
                writer.close()
            report = writer.report
            for line in report.refused:
                say(f"  refused {line}")
            root = stage.finish(
                started,
                {
                    "kind": "image",
                    "image": {
                        "source": os.path.abspath(image),
                        "format": found.format,
                        **identity,
                        "names": list(found.names),
                        "layers": [layer.digest or layer.diff_id for layer in found.layers],
                        "config": _run_config(found.config),
                        "refused": report.refused,
                        "refused_count": report.refused_count,
                        "not_created": report.skipped,
                    },
                },
                report.stripped,
            )
    refused = f", {report.refused_count} entries refused" if report.refused_count else ""
    made = root.manifest
    say(
        f"imported {name} in {made['build_seconds']:.1f} s: {made['size_bytes'] / 1e6:.0f} MB, "
        f"{len(found.layers)} layers{refused} -> {root.path}"
    )
    return root


def _run_config(config: dict[str, Any]) -> dict[str, Any]:
    """What the image says a run should have (recorded, not applied: runs name their own)."""
    run = config.get("config")
    return {k: run.get(k) for k in ("Env", "Cmd", "WorkingDir")} if isinstance(run, dict) else {}


@contextlib.contextmanager
def _open_archive(image: str) -> Iterator[tarfile.TarFile]:
    try:
        fd = _open_regular(image)
    except FileNotFoundError:
        raise RootfsError(f"no image file {image!r}", "give the path of a `docker save` or OCI archive") from None
    except OSError as exc:
        raise ImageError(f"{image!r} is not a tar archive: {exc}") from None
    with contextlib.ExitStack() as stack:
        file = stack.enter_context(os.fdopen(fd, "rb"))
        try:
            archive = stack.enter_context(tarfile.open(fileobj=file, mode="r:*"))
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(f"{image!r} is not a tar archive: {exc}") from None
        yield archive


def _open_regular(path: str) -> int:
    """An fd to read ``path`` (symlinks followed: the caller names their own file) if it is
    a regular file (_hostfiles.reopen_regular: a FIFO or a device is never opened)."""
    try:
        return reopen_regular(os.open(path, os.O_PATH | os.O_CLOEXEC))
    except NotRegularFile as exc:
        raise RootfsError(
            f"{path!r} is {exc.kind}, not a regular file: not read",
            "give the path of a `docker save` or OCI archive (save it to a file first)",
        ) from None


def read_image(archive: tarfile.TarFile) -> Image:
    names = {_clean(m.name) for m in archive.getmembers()}
    if "index.json" in names:
        return _read_oci(archive)
    if "manifest.json" in names:
        return _read_docker(archive)
    raise ImageError("neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)")


# --- the OCI image layout -----------------------------------------------------------------
def _read_oci(archive: tarfile.TarFile) -> Image:
    index = _json(archive, "index.json")
    manifests = _select(archive, index)
    if len(manifests) != 1:
        raise ImageError(
            f"the archive holds {len(manifests)} images for this platform; import one at a time "
            "(e.g. `skopeo copy` a single one to an oci-archive)"
        )
    descriptor, ref_names = manifests[0]
    manifest = _json(archive, _blob(descriptor), descriptor)
    config = _json(archive, _blob(_dict(manifest.get("config"), "the manifest's config")), manifest["config"])
    descriptors = _list(manifest.get("layers"), "the manifest's layers")
    diff_ids = _diff_ids(config, len(descriptors))
    layers = tuple(
        Layer(_blob(d), _digest(d), _size(d), diff_id) for d, diff_id in zip(descriptors, diff_ids, strict=True)
    )
    return Image("oci", _digest(descriptor), config, layers, tuple(ref_names))


def _select(archive: tarfile.TarFile, index: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """The image manifests of an index for this machine, each once with all its reference
    names (one image under two tags is one image). Nested indexes are followed to a depth of
    _INDEX_DEPTH, each once, _INDEX_ENTRIES descriptors in all: an archive of a few KB could
    otherwise ask for any number of walks."""
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}
    seen: set[str] = set()
    pending: list[tuple[dict[str, Any], list[str], int]] = [(index, [], 0)]
    visited = 0
    while pending:
        current, names, depth = pending.pop()
        for descriptor in _list(current.get("manifests"), "an index's manifests"):
            visited += 1
            if visited > _INDEX_ENTRIES:
                raise ImageError(f"the image's indexes list more than {_INDEX_ENTRIES} manifests")
            descriptor = _dict(descriptor, "a manifest descriptor")
            annotations = descriptor.get("annotations") or {}
            ref = [str(v) for k, v in _dict(annotations, "annotations").items() if k in _REF_ANNOTATIONS]
            wanted = descriptor.get("platform")
            if isinstance(wanted, dict) and not _runs_here(wanted):
                continue
            digest = _digest(descriptor)
            if descriptor.get("mediaType") in _INDEX_TYPES:
                if depth + 1 > _INDEX_DEPTH:
                    raise ImageError(f"the image's indexes are nested more than {_INDEX_DEPTH} deep")
                if digest not in seen:
                    seen.add(digest)
                    pending.append((_json(archive, _blob(descriptor), descriptor), names + ref, depth + 1))
            elif digest in found:
                found[digest][1].extend(n for n in names + ref if n not in found[digest][1])
            else:
                found[digest] = (descriptor, names + ref)
    return list(found.values())


def _runs_here(wanted: dict[str, Any]) -> bool:
    machine = platform.machine()
    return wanted.get("os") == "linux" and wanted.get("architecture") == _ARCH.get(machine, machine)


def _blob(descriptor: dict[str, Any]) -> str:
    digest = _digest(descriptor)
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _digest(descriptor: dict[str, Any]) -> str:
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or not _HEX.fullmatch(digest[7:]):
        raise ImageError(f"a descriptor's digest {digest!r} is not sha256:<64 hex digits> (the only one supported)")
    return digest


def _size(descriptor: dict[str, Any]) -> int:
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"a descriptor's size {size!r} is not a byte count")
    return size


# --- docker save's own format -------------------------------------------------------------
def _read_docker(archive: tarfile.TarFile) -> Image:
    entries = _list(_json_any(archive, "manifest.json"), "manifest.json")
    if len(entries) != 1:
        raise ImageError(f"manifest.json lists {len(entries)} images; `docker save` one image at a time")
    entry = _dict(entries[0], "manifest.json's entry")
    config_path = entry.get("Config")
    hex_digest = posixpath.basename(str(config_path)).removesuffix(".json")
    if not isinstance(config_path, str) or not _HEX.fullmatch(hex_digest):
        raise ImageError(f"the config {config_path!r} is not named by its sha256 digest")
    config = _json(archive, config_path, {"digest": f"sha256:{hex_digest}"})
    paths = _list(entry.get("Layers"), "manifest.json's Layers")
    diff_ids = _diff_ids(config, len(paths))
    layers = []
    for path, diff_id in zip(paths, diff_ids, strict=True):
        blob = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", _clean(str(path)))
        layers.append(Layer(str(path), f"sha256:{blob.group(1)}" if blob else None, None, diff_id))
    tags = tuple(str(t) for t in entry.get("RepoTags") or ())
    return Image("docker", f"sha256:{hex_digest}", config, tuple(layers), tags)


def _diff_ids(config: dict[str, Any], count: int) -> list[str]:
    rootfs = _dict(config.get("rootfs"), "the config's rootfs")
    diff_ids = [str(d) for d in _list(rootfs.get("diff_ids"), "the config's rootfs.diff_ids")]
    if len(diff_ids) != count:
        raise ImageError(f"the config lists {len(diff_ids)} layer digests (diff_ids) for {count} layers")
    for d in diff_ids:
        _digest({"digest": d})
    return diff_ids


# --- reading members ----------------------------------------------------------------------
def _clean(name: str) -> str:
    return posixpath.normpath(name).lstrip("/") if name not in ("", ".") else "."


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    """A file of the archive, by name; its own symlinks followed inside the archive only."""
    wanted = _clean(name)
    for _hop in range(8):
        if wanted.startswith("../") or wanted == "..":
            break
        try:
            info = archive.getmember(wanted)
        except KeyError:
            info = next((m for m in archive.getmembers() if _clean(m.name) == wanted), None)  # type: ignore[assignment]
            if info is None:
                raise ImageError(f"the archive has no {wanted!r}") from None
        if info.issym():
            wanted = _clean(posixpath.join(posixpath.dirname(wanted), info.linkname))
            continue
        if info.islnk():
            wanted = _clean(info.linkname)
            continue
        data = archive.extractfile(info) if info.isreg() else None
        if data is None:
            break
        return data
    raise ImageError(f"{name!r} in the archive is not a file inside it")


def _json_any(archive: tarfile.TarFile, name: str, descriptor: dict[str, Any] | None = None) -> Any:
    data = _member(archive, name).read(_JSON_LIMIT + 1)
    if len(data) > _JSON_LIMIT:
        raise ImageError(f"{name} is larger than {_JSON_LIMIT >> 20} MiB")
    if descriptor is not None:
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != descriptor["digest"]:
            raise ImageError(f"{name}: its digest is {actual}, not {descriptor['digest']} as the image says")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise ImageError(f"{name} is not JSON nsbox can read: {type(exc).__name__}") from None


def _json(archive: tarfile.TarFile, name: str, descriptor: dict[str, Any] | None = None) -> dict[str, Any]:
    return _dict(_json_any(archive, name, descriptor), name)


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ImageError(f"{what} is not a JSON list")
    return value


# --- layers -------------------------------------------------------------------------------
class _Digesting(io.RawIOBase):
    """Reads through, hashing and counting what passes."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.count = 0
        self.data_end = 0  #: the offset after the last byte that is not zero

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.hash.update(data)
        if kept := len(data.rstrip(b"\0")):
            self.data_end = self.count + kept
        self.count += len(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


def _apply_verified(archive: tarfile.TarFile, layer: Layer, writer: LayerWriter) -> None:
    stored = _Digesting(_member(archive, layer.path))
    head = io.BufferedReader(stored, 1 << 20)
    magic = head.peek(4)[:4]
    if magic.startswith(_ZSTD):
        raise ImageError(
            f"layer {layer.path} is zstd-compressed, which this Python cannot read: save the image with gzip layers "
            "(`docker save`, or `skopeo copy --dest-compress-format gzip`)"
        )
    plain = _Digesting(gzip.GzipFile(fileobj=head, mode="rb") if magic.startswith(_GZIP) else head)  # type: ignore[arg-type]
    try:
        end = writer.apply(io.BufferedReader(plain, 1 << 20), f"layer {layer.path}")
        plain.drain()
        if plain.data_end > end:  # tarfile stops quietly at a bad header, or at one zero block
            raise ImageError(
                f"layer {layer.path}: data after its last readable entry (at byte {end}): damaged or truncated"
            )
        head.read()  # what follows the compressed stream still counts for the blob's digest
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(f"layer {layer.path}: its compressed stream is damaged: {exc}") from None
    if layer.digest is not None and stored.digest != layer.digest:
        raise ImageError(f"layer {layer.path}: its digest is {stored.digest}, not {layer.digest} as the image says")
    if layer.size is not None and stored.count != layer.size:
        raise ImageError(f"layer {layer.path}: {stored.count} bytes, not {layer.size} as the image says")
    if plain.digest != layer.diff_id:
        raise ImageError(f"layer {layer.path}: its content's digest is {plain.digest}, not {layer.diff_id} (diff_ids)")


def _write_failure(exc: OSError, directory: str) -> RootfsError:
    if exc.errno == errno.ENOSPC:
        return RootfsError(
            f"no space left in {directory} while unpacking the image",
            "free some space there, or set NSBOX_DATA_DIR to a folder on a larger filesystem",
        )
    return RootfsError(f"unpacking the image failed: {exc}")
