"""The one schema of options: frozen dataclasses, validated on construction.

Options become data here; nothing past ``_cli.py`` sees argparse, and everything below
this module trusts a :class:`SandboxSpec` because it could not have been built invalid.
Every error names the option in both spellings, e.g. ``workspace_size (--workspace-size)``.

The spec crosses process boundaries as JSON (``to_dict``/``from_dict``, strict about
unknown keys) and can be written by people as TOML (``from_toml``/``to_toml``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import SpecError
from ._values import GiB, MiB, bounded, option_name, parse_number, parse_size, parse_timeout

__all__ = ["GiB", "MiB", "option_name", "parse_size", "parse_timeout"]  # re-exported for callers

#: Where things are inside every sandbox.
WORKSPACE = "/workspace"
TMP = "/tmp"  # nosec B108  # inside the sandbox: its own private, size-capped tmpfs
#: The unprivileged identity payloads run as, inside the sandbox.
PAYLOAD_UID = 1000
PAYLOAD_GID = 1000
PAYLOAD_USER = "sandbox"

#: Targets that nsbox itself owns inside the sandbox (/.old holds the host's root while
#: the sandbox's is built).
_RESERVED_TARGETS = ("/proc", "/dev", "/.old")
MAX_MOUNTS = 200
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _clean_target(target: str, option: str) -> str:
    if not target.startswith("/"):
        raise SpecError(option_name(option), f"destination {target!r} must be an absolute path inside the sandbox")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SpecError(
            option_name(option), f"destination {target!r} must not contain '..' (it could escape the new root)"
        )
    if "\0" in target:
        raise SpecError(option_name(option), "destination contains a NUL byte")
    clean = "/" + "/".join(parts)
    if clean == "/":
        raise SpecError(option_name(option), "destination '/' would replace the sandbox's root; use --rootfs")
    for reserved in _RESERVED_TARGETS:
        if clean == reserved or clean.startswith(reserved + "/"):
            raise SpecError(option_name(option), f"destination {clean!r} lies in {reserved}, which nsbox builds itself")
    return clean


@dataclass(frozen=True)
class Mount:
    """A host path made visible inside: read-only unless ``writable``."""

    source: str
    target: str
    writable: bool = False

    def __post_init__(self) -> None:
        option = "mounts"
        if not isinstance(self.source, str) or not self.source or "\0" in self.source:
            raise SpecError(option_name(option), f"bind source {self.source!r} is not a path")
        # Canonical from here on: the supervisor opens exactly this path and follows no
        # symlink on the way, so one planted or swapped in later is refused, not followed.
        source = os.path.realpath(os.path.abspath(self.source))
        if not os.path.exists(source):
            raise SpecError(option_name(option), f"bind source {source!r} does not exist on the host")
        if not (os.path.isdir(source) or os.path.isfile(source)):
            raise SpecError(option_name(option), f"bind source {source!r} is neither a directory nor a file")
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "target", _clean_target(str(self.target), option))

    @classmethod
    def parse(cls, text: str, *, writable: bool = False) -> Mount:
        """``SRC`` or ``SRC:DST`` (DST defaults to SRC's absolute path)."""
        source, sep, target = text.partition(":")
        if not source:
            raise SpecError(option_name("mounts"), f"{text!r} has no source; use SRC[:DST]")
        return cls(source, target if sep else os.path.abspath(source), writable)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "writable": self.writable}


@dataclass(frozen=True)
class Caps:
    """The largest limits a caller may ask for: settings of the operator, read from the
    environment (NSBOX_MAX_MEMORY, NSBOX_MAX_CPUS, NSBOX_MAX_PIDS), defaulting to the seed's."""

    memory: int = 2 * GiB
    cpus: float = 4.0
    pids: int = 1024

    @classmethod
    def from_env(cls) -> Caps:
        env = os.environ
        return cls(
            memory=parse_size(env.get("NSBOX_MAX_MEMORY", cls.memory), "NSBOX_MAX_MEMORY"),
            cpus=parse_number(env.get("NSBOX_MAX_CPUS", cls.cpus), "NSBOX_MAX_CPUS"),
            pids=int(parse_number(env.get("NSBOX_MAX_PIDS", cls.pids), "NSBOX_MAX_PIDS")),
        )


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use. memory, cpus and pids are enforced by cgroups (the whole
    sandbox); timeout, cpu_time and output_limit apply per run; file_size and open_files
    are rlimits of each process. ``cgroups=False`` (--no-cgroups) is the operator's
    explicit choice to rely on rlimits alone (memory becomes RLIMIT_AS, pids RLIMIT_NPROC)."""

    memory: int = 512 * MiB
    cpus: float = 1.0
    pids: int = 64
    timeout: float | None = 60.0
    cpu_time: float | None = None
    output_limit: int = 16 * MiB
    file_size: int = GiB
    open_files: int = 1024
    cgroups: bool = True

    def __post_init__(self) -> None:
        caps = Caps.from_env()
        if not isinstance(self.cgroups, bool):
            raise SpecError(option_name("cgroups"), f"{self.cgroups!r} is not true or false")
        for name, value in (
            ("memory", int(bounded("memory", self.memory, 32 * MiB, caps.memory, "size", "NSBOX_MAX_MEMORY"))),
            ("cpus", bounded("cpus", self.cpus, 0.01, caps.cpus, "number", "NSBOX_MAX_CPUS")),
            ("pids", int(bounded("pids", self.pids, 1, caps.pids, "whole", "NSBOX_MAX_PIDS"))),
            ("timeout", parse_timeout(self.timeout)),
            ("cpu_time", parse_timeout(self.cpu_time, "cpu_time")),
            ("output_limit", int(bounded("output_limit", self.output_limit, 0, 64 * MiB, "size"))),
            ("file_size", int(bounded("file_size", self.file_size, 0, 1 << 50, "size"))),
            ("open_files", int(bounded("open_files", self.open_files, 16, 1 << 20, "whole"))),
        ):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that defines a sandbox. Build it, or let ``NsSandbox(**options)`` do it."""

    rootfs: str | None = None
    mounts: tuple[Mount, ...] = ()
    workspace_size: int = 256 * MiB
    hostname: str = "nsbox"
    env: tuple[tuple[str, str], ...] = ()
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.rootfs is not None:
            rootfs = os.path.abspath(str(self.rootfs))
            if not os.path.isdir(rootfs):
                raise SpecError(option_name("rootfs"), f"{rootfs!r} is not a directory")
            object.__setattr__(self, "rootfs", rootfs)
        mounts = tuple(m if isinstance(m, Mount) else Mount(**m) for m in self.mounts)
        if len(mounts) > MAX_MOUNTS:
            raise SpecError(option_name("mounts"), f"{len(mounts)} binds; at most {MAX_MOUNTS}")
        targets = [m.target for m in mounts]
        if dupes := sorted({t for t in targets if targets.count(t) > 1}):
            raise SpecError(option_name("mounts"), f"destination(s) used twice: {', '.join(dupes)}")
        object.__setattr__(self, "mounts", mounts)
        size = int(bounded("workspace_size", self.workspace_size, MiB, 64 * GiB, "size"))
        object.__setattr__(self, "workspace_size", size)
        if not isinstance(self.hostname, str) or not _HOSTNAME_RE.match(self.hostname):
            raise SpecError(
                option_name("hostname"), f"{self.hostname!r} is not a hostname (letters, digits, '-', '.'; 64 at most)"
            )
        object.__setattr__(self, "env", _clean_env(self.env))
        if isinstance(self.limits, Mapping):
            object.__setattr__(self, "limits", Limits(**_known(Limits, self.limits, "limits")))
        elif not isinstance(self.limits, Limits):
            raise SpecError("limits", f"{self.limits!r} is not a Limits")

    # -- derived values ------------------------------------------------------------------
    def payload_env(self, extra: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> dict[str, str]:
        """The payload's whole environment: a minimal base, the spec's env, then ``extra``."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "HOME": WORKSPACE,
            "USER": PAYLOAD_USER,
            "LOGNAME": PAYLOAD_USER,
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            "TMPDIR": TMP,
        }
        env.update(self.env)
        env.update(_clean_env(extra))
        return env

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "rootfs": self.rootfs,
            "mounts": [m.to_dict() for m in self.mounts],
            "workspace_size": self.workspace_size,
            "hostname": self.hostname,
            "env": dict(self.env),
            "limits": {f.name: getattr(self.limits, f.name) for f in fields(Limits)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxSpec:
        if not isinstance(data, Mapping):
            raise SpecError("spec", "must be a mapping of option names to values")
        known = _known(cls, data, "spec")
        if "mounts" in known:
            known["mounts"] = tuple(_mount_from_dict(m) for m in known["mounts"])
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError("spec", f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, text: str) -> SandboxSpec:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError("spec", f"not valid TOML: {exc}") from None
        return cls.from_dict(data)

    def to_toml(self) -> str:
        data = self.to_dict()
        lines = [f"{key} = {_toml_value(data[key])}" for key in ("rootfs", "workspace_size", "hostname") if data[key]]
        lines.append("[env]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data["env"].items()]
        lines.append("[limits]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["limits"].items() if v is not None]
        for mount in data["mounts"]:
            lines.append("[[mounts]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in mount.items()]
        return "\n".join(lines) + "\n"


def _mount_from_dict(data: Any) -> Mount:
    if not isinstance(data, Mapping):
        raise SpecError(option_name("mounts"), f"{data!r} is not a mapping of source, target, writable")
    mount = Mount(**_known(Mount, data, "mounts"))
    if mount.source != data.get("source"):
        raise SpecError(
            option_name("mounts"),
            f"bind source {data.get('source')!r} now resolves to {mount.source!r} (a symlink changed); refused",
        )
    return mount


def _known(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    if unknown := sorted(set(data) - names):
        raise SpecError(tuple(f"{where}.{u}" for u in unknown), f"unknown option; known: {', '.join(sorted(names))}")
    return dict(data)


def _clean_env(env: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str]) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    source: Iterable[Any] = env.items() if isinstance(env, Mapping) else env
    for item in source:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep:
                raise SpecError(option_name("env"), f"{item!r} is not KEY=VALUE")
        else:
            key, value = item
        if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
            raise SpecError(option_name("env"), f"{key!r} is not a valid variable name")
        if not isinstance(value, str) or "\0" in value:
            raise SpecError(option_name("env"), f"the value of {key} must be a string without NUL bytes")
        items.append((key, value))
    return tuple(dict(items).items())


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
