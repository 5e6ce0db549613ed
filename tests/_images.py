"""Container image archives made by hand, for the tests of ``nsbox rootfs import``.

A layer is a list of entries (``file``, ``folder``, ``symlink``, ``hardlink``, ``whiteout``,
``opaque``, ``device``, ``fifo``, ``raw``); names are written into the tar exactly as given,
so ``file("../../escape")`` or ``file("/abs")`` make the hostile entries an extractor must
refuse. ``oci_archive`` and ``docker_archive`` assemble the layers into an image:

- an OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>`` for the
  manifest, the config and each layer (optionally gzip-compressed);
- ``docker save``'s older format: ``manifest.json``, ``<hex>.json`` (the config) and
  ``<id>/layer.tar``.

Both return an :class:`Archive`: its members as bytes, with every digest already computed,
so that a test can change a member afterwards (a tampered blob) before ``write``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MTIME = 1_700_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Entry:
    """One member of a layer tar: a TarInfo and, for a file, its content."""

    info: tarfile.TarInfo
    content: bytes | None = None


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # verbatim: tarfile does not clean a name it is given
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    return info


def file(name: str, content: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    data = content.encode() if isinstance(content, str) else content
    info = _info(name, tarfile.REGTYPE, mode, uid, gid)
    info.size = len(data)
    return Entry(info, data)


def folder(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(_info(name, tarfile.DIRTYPE, mode, uid, gid))


def symlink(name: str, target: str) -> Entry:
    info = _info(name, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    return Entry(info)


def hardlink(name: str, target: str) -> Entry:
    """``target`` is, as in every tar, relative to the top of the archive (not to ``name``)."""
    info = _info(name, tarfile.LNKTYPE, 0o644)
    info.linkname = target
    return Entry(info)


def whiteout(path: str) -> Entry:
    """``.wh.NAME`` next to ``path``: removes ``path`` of the layers below."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(folder_path: str) -> Entry:
    """``FOLDER/.wh..wh..opq``: hides all the layers below put in that folder."""
    return file(f"{folder_path.rstrip('/')}/.wh..wh..opq")


def device(name: str, major: int = 1, minor: int = 3, block: bool = False) -> Entry:
    info = _info(name, tarfile.BLKTYPE if block else tarfile.CHRTYPE, 0o666)
    info.devmajor, info.devminor = major, minor
    return Entry(info)


def fifo(name: str) -> Entry:
    return Entry(_info(name, tarfile.FIFOTYPE, 0o644))


def raw(info: tarfile.TarInfo, content: bytes | None = None) -> Entry:
    """Any TarInfo as it is (its size is set from ``content``)."""
    if content is not None:
        info.size = len(content)
    return Entry(info, content)


def layer_tar(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.info, io.BytesIO(entry.content) if entry.content is not None else None)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


@dataclass
class Archive:
    """An image archive before it is written: ``members`` (archive name -> bytes, in order)."""

    format: str  #: "oci" or "docker"
    members: dict[str, bytes]
    digest: str  #: what nsbox records as the image's digest: the manifest's (OCI), the config's (docker)
    manifest: str  #: the member holding the image manifest
    config: str  #: the member holding the config
    layers: list[str] = field(default_factory=list)  #: the members holding the layers, bottom first

    def tamper(self, member: str, old: bytes, new: bytes) -> None:
        """Changes bytes of a member after its digest was written down elsewhere."""
        assert old in self.members[member], f"{old!r} is not in {member}"
        self.members[member] = self.members[member].replace(old, new, 1)

    def write(self, path: Path) -> Path:
        with tarfile.open(path, "w") as tar:
            folders: set[str] = set()
            for name, data in self.members.items():
                parts = name.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    sub = "/".join(parts[:i])
                    if sub not in folders:
                        folders.add(sub)
                        tar.addfile(_info(sub, tarfile.DIRTYPE, 0o755))
                info = _info(name, tarfile.REGTYPE, 0o644)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path


def _config(diff_ids: list[str]) -> bytes:
    return _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )


def oci_archive(
    layers: list[list[Entry] | bytes], compress: bool = False, diff_ids: list[str] | None = None
) -> Archive:
    """An OCI image layout; a layer is entries or a whole tar; ``diff_ids`` replaces the
    config's (a wrong one, say)."""
    plain = [entries if isinstance(entries, bytes) else layer_tar(entries) for entries in layers]
    stored = [gzip.compress(data, mtime=0) if compress else data for data in plain]
    config = _config(diff_ids if diff_ids is not None else [sha256(data) for data in plain])
    media = OCI_LAYER + ("+gzip" if compress else "")
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": media, "digest": sha256(blob), "size": len(blob)} for blob in stored],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256(manifest),
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": "test:latest"},
                }
            ],
        }
    )

    def blob(data: bytes) -> str:
        return "blobs/sha256/" + sha256(data).removeprefix("sha256:")

    members = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    members.update({blob(data): data for data in (manifest, config, *stored)})
    return Archive("oci", members, sha256(manifest), blob(manifest), blob(config), [blob(data) for data in stored])


def docker_archive(layers: list[list[Entry]], diff_ids: list[str] | None = None) -> Archive:
    """What ``docker save`` wrote before Docker 25: uncompressed ``<id>/layer.tar`` files."""
    plain = [layer_tar(entries) for entries in layers]
    config = _json(
        {**json.loads(_config(diff_ids if diff_ids is not None else [sha256(d) for d in plain])), "id": "test"}
    )
    config_name = sha256(config).removeprefix("sha256:") + ".json"
    ids = [hashlib.sha256(f"layer {i} {sha256(data)}".encode()).hexdigest() for i, data in enumerate(plain)]
    manifest = _json([{"Config": config_name, "RepoTags": ["test:latest"], "Layers": [f"{i}/layer.tar" for i in ids]}])
    members = {config_name: config}
    for layer_id, data in zip(ids, plain, strict=True):
        members[f"{layer_id}/VERSION"] = b"1.0"
        members[f"{layer_id}/layer.tar"] = data
    members["manifest.json"] = manifest
    members["repositories"] = _json({"test": {"latest": ids[-1]}})
    return Archive("docker", members, sha256(config), "manifest.json", config_name, [f"{i}/layer.tar" for i in ids])
