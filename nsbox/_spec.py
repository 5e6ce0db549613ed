"""The one schema of options: frozen dataclasses, validated on construction.

Options become data here; nothing past ``_cli.py`` sees argparse, and everything below
this module trusts a :class:`SandboxSpec` because it could not have been built invalid.
Every error names the option in both spellings, e.g. ``workspace_size (--workspace-size)``.

The spec crosses process boundaries as JSON (``to_dict``/``from_dict``, strict about
unknown keys) and can be written by people as TOML (``from_toml``/``to_toml``).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ._errors import SecurityError, SpecError
from ._hostfiles import canonical_path, is_net_namespace, read_host_file
from ._values import GiB, MiB, bounded, option_name, parse_number, parse_size, parse_timeout

if TYPE_CHECKING:
    from ._netpolicy import Entry

__all__ = ["GiB", "MiB", "option_name", "parse_size", "parse_timeout"]  # re-exported for callers

#: Where things are inside every sandbox.
WORKSPACE = "/workspace"
WHEELS = "/wheels"
PACKAGES = f"{WORKSPACE}/.packages"  #: where install_packages puts packages (on the kernel's sys.path)
#: Where a sandbox with network "allow" finds its egress proxy: its own loopback (the
#: listening socket belongs to the supervisor's proxy process, outside).
PROXY_ADDRESS = ("127.0.0.1", 3128)  #: where the wheelhouse (the ``wheels`` option) is bound, read-only
TMP = "/tmp"  # nosec B108  # inside the sandbox: its own private, size-capped tmpfs
#: The unprivileged identity payloads run as, inside the sandbox.
PAYLOAD_UID = 1000
PAYLOAD_GID = 1000
PAYLOAD_USER = "sandbox"
#: run_code's programs run as a uid of their own (nothing else does: the sweep after each
#: program removes whatever it owns), and its sweeper's real uid is one no process has.
PROGRAM_UID = PROGRAM_GID = 1001
PROGRAM_USER = "program"
SWEEPER_UID = 1002

#: Targets that nsbox itself owns inside the sandbox (/.old holds the host's root while
#: the sandbox's is built).
_RESERVED_TARGETS = ("/proc", "/dev", "/.old")
MAX_MOUNTS = 200
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SYSCALL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


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
        # Canonical from here on (only root's own symlinks followed: _hostfiles.canonical_path):
        # the supervisor opens exactly this path and follows no symlink on the way, so one
        # planted or swapped in later is refused, not followed.
        source = canonical_path(self.source, what=option_name(option))
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


#: The largest output_limit: two streams of it, and a result as large, fit one frame to the
#: front-end (``_protocol.MAX_FRAME_SESSION``; ``tests/unit/test_protocol.py`` checks the sum).
MAX_OUTPUT_LIMIT = 64 * MiB


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
            ("output_limit", int(bounded("output_limit", self.output_limit, 0, MAX_OUTPUT_LIMIT, "size"))),
            ("file_size", int(bounded("file_size", self.file_size, 0, 1 << 50, "size"))),
            ("open_files", int(bounded("open_files", self.open_files, 16, 1 << 20, "whole"))),
        ):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Seccomp:
    """The payload's syscall filter: nsbox's default allowlist, changed by ``allow``
    (syscalls added, with any arguments) and ``refuse`` (syscalls refused with
    ``refuse_errno``); or no filter at all (``unconfined``: for debugging only, and marked
    in every result). A policy file (``--seccomp FILE``, TOML or JSON) holds the four
    other fields; whether the names are syscalls is checked when the filter is compiled."""

    allow: tuple[str, ...] = ()
    refuse: tuple[str, ...] = ()
    unknown_errno: str = "ENOSYS"  #: for syscalls the policy does not name (so libc falls back)
    refuse_errno: str = "EPERM"
    unconfined: bool = False

    def __post_init__(self) -> None:
        option = option_name("seccomp")
        for name in ("allow", "refuse"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and _SYSCALL_RE.match(v) for v in value):
                raise SpecError(f"{option} {name}", f"{value!r} is not a list of syscall names")
            object.__setattr__(self, name, tuple(sorted(set(value))))
        if both := sorted(set(self.allow) & set(self.refuse)):
            raise SpecError(f"{option} allow, refuse", f"{', '.join(both)} both allowed and refused")
        for name in ("unknown_errno", "refuse_errno"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value.isupper() and getattr(errno, value, None) in errno.errorcode):
                raise SpecError(f"{option} {name}", f"{value!r} is not an errno name such as EPERM or ENOSYS")
        if not isinstance(self.unconfined, bool):
            raise SpecError(f"{option} unconfined", f"{self.unconfined!r} is not true or false")
        changed = self.allow or self.refuse or (self.unknown_errno, self.refuse_errno) != ("ENOSYS", "EPERM")
        if self.unconfined and changed:
            raise SpecError(option, "unconfined means no filter: it takes no other setting")

    @property
    def kind(self) -> str:
        """For reports: "default", "custom" or "unconfined"."""
        return "unconfined" if self.unconfined else "default" if self == Seccomp() else "custom"

    @classmethod
    def parse(cls, value: Seccomp | Mapping[str, Any] | str | os.PathLike[str] | None) -> Seccomp:
        """``None`` or "default", "unconfined", a mapping of the fields, or a policy file."""
        if isinstance(value, Seccomp):
            return value
        if value is None or value == "default":
            return cls()
        if value == "unconfined":
            return cls(unconfined=True)
        if isinstance(value, Mapping):
            return cls(**_known(cls, value, "seccomp"))
        return cls.from_file(value)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Seccomp:
        option = option_name("seccomp")
        try:  # it decides the filter: a regular file, and no symlink planted on its way
            raw = read_host_file(path, 1 << 20, what=option)
        except SecurityError as exc:
            raise SpecError(option, f"the policy file: {exc}") from None
        except OSError as exc:
            raise SpecError(option, f"cannot read the policy file {str(path)!r}: {exc.strerror}") from None
        try:
            text = raw.decode()
            data = json.loads(text) if text.lstrip().startswith("{") else _toml_loads(text)
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise SpecError(option, f"{str(path)!r} is not a TOML or JSON policy: {exc}") from None
        if not isinstance(data, Mapping) or "unconfined" in data:
            raise SpecError(option, f"{str(path)!r} must hold allow, refuse, unknown_errno and/or refuse_errno")
        return cls(**_known(cls, data, option))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


#: The network modes: loopback only; the egress proxy; a routed interface (``NetworkPolicy``).
MODES = ("none", "allow", "routed")


@dataclass(frozen=True)
class NetworkPolicy:
    """The sandbox's way out. ``none`` (the default): loopback only. ``allow``: still only
    loopback inside, plus an HTTP proxy (CONNECT and plain HTTP) at PROXY_ADDRESS that the
    supervisor owns: it lets through connections to ``allowed_hosts`` only (see
    ``_netpolicy``), with ``timeout`` (connect and idle seconds), ``rate`` (new connections per
    second) and ``max_bytes`` (both ways, for the sandbox's life). ``routed`` (root only): a
    real interface, ``eth0``, whose traffic the kernel filters outside the sandbox to the
    same allowlist, for any TCP or UDP program (``_routed``); its DNS, answered by nsbox at
    the sandbox's 127.0.0.1:53, resolves allowed names only, through ``resolver`` ("IP" or
    "IP:PORT"; default: this host's first IPv4 nameserver); ``rate`` and ``max_bytes`` hold
    there too. ``hosts`` maps names to addresses before DNS (as ``--add-host``); ``uplink`` is
    a network namespace (a path such as /run/netns/NAME) in which the proxy connects out, or
    the routed sandbox's veth ends, instead of the supervisor's own."""

    mode: str = "none"
    allowed_hosts: tuple[str, ...] = ()
    timeout: float = 30.0
    rate: float = 20.0
    max_bytes: int | None = None
    hosts: tuple[tuple[str, str], ...] = ()
    uplink: str | None = None
    resolver: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SpecError(option_name("network"), f"{self.mode!r} is not 'none', 'allow' or 'routed'")
        hosts: Any = self.allowed_hosts  # checked: it may be anything a caller passed
        if isinstance(hosts, str) or not all(isinstance(h, str) for h in hosts):
            raise SpecError(option_name("allowed_hosts"), f"{hosts!r} is not a list of hosts")
        entries: tuple[Entry, ...] = ()
        if hosts:  # the parser's module (~6 ms of imports) only where there is a list to parse
            from ._netpolicy import parse_allowlist

            entries = parse_allowlist(hosts)
            hosts = tuple(e.text for e in entries)
        object.__setattr__(self, "allowed_hosts", tuple(hosts))
        if self.mode == "none" and self.allowed_hosts:
            raise SpecError(
                (option_name("network"), option_name("allowed_hosts")), "hosts need network 'allow' or 'routed'"
            )
        if self.mode == "routed":
            self._check_routed(entries)
        elif self.resolver is not None:
            raise SpecError(
                (option_name("network"), option_name("network.resolver")), "a resolver needs network 'routed'"
            )
        timeout = parse_timeout(self.timeout, "network.timeout")
        if timeout is None:
            raise SpecError(option_name("network.timeout"), "a network timeout is required")
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "rate", bounded("network.rate", self.rate, 0.1, 10_000, "number"))
        if self.max_bytes is not None:
            object.__setattr__(self, "max_bytes", int(bounded("network.max_bytes", self.max_bytes, 1, 1 << 50, "size")))
        pairs = self.hosts.items() if isinstance(self.hosts, Mapping) else self.hosts
        clean = []
        for pair in pairs:
            name, _, address = pair.partition("=") if isinstance(pair, str) else (pair[0], "=", pair[1])
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise SpecError(option_name("network.hosts"), f"{pair!r} is not NAME=IP") from None
            if not name or not isinstance(name, str):
                raise SpecError(option_name("network.hosts"), f"{pair!r} is not NAME=IP")
            clean.append((name.lower().rstrip("."), str(address)))
        object.__setattr__(self, "hosts", tuple(clean))
        if self.uplink is not None and not is_net_namespace(str(self.uplink)):
            raise SpecError(option_name("network.uplink"), f"{self.uplink!r} is not a network namespace file")

    def _check_routed(self, entries: tuple[Entry, ...]) -> None:
        """What the kernel's filter cannot hold is refused here, not widened: it sees IPv4
        addresses and ports, so an IPv6 entry or a network with a port has no rule."""
        for entry in entries:
            if entry.network is not None and entry.network.version == 6:
                raise SpecError(option_name("allowed_hosts"), f"{entry.text!r}: network 'routed' is IPv4 only")
            if entry.network is not None and entry.network.num_addresses > 1 and entry.port is not None:
                raise SpecError(
                    option_name("allowed_hosts"),
                    f"{entry.text!r}: network 'routed' takes a port on a host or one IP, not on a network",
                )
        if self.resolver is not None:
            self.resolver_address()  # raises SpecError if it is not IPv4[:PORT]

    def resolver_address(self) -> tuple[str, int] | None:
        """``resolver`` as (IPv4, port; 53 unless given), or None when there is none."""
        if self.resolver is None:
            return None
        text = str(self.resolver)
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
        try:
            ipaddress.IPv4Address(host)
            number = int(port) if port else 53
            if not 0 < number < 65536:
                raise ValueError(port)
        except ValueError:
            raise SpecError(option_name("network.resolver"), f"{text!r} is not IPv4[:PORT]") from None
        return host, number

    @classmethod
    def parse(cls, value: NetworkPolicy | Mapping[str, Any] | str | None) -> NetworkPolicy:
        if isinstance(value, NetworkPolicy):
            return value
        if value is None or value in MODES:
            return cls(mode=value or "none")
        if isinstance(value, Mapping):
            return cls(**_known(cls, value, "network"))
        raise SpecError(option_name("network"), f"{value!r} is not 'none', 'allow', 'routed' or a NetworkPolicy")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["allowed_hosts"] = list(self.allowed_hosts)
        data["hosts"] = dict(self.hosts)
        return data


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that defines a sandbox. Build it, or let ``NsSandbox(**options)`` do it."""

    rootfs: str | None = None  #: a root's NAME (``nsbox rootfs list``) or a DIR; bound read-only
    mounts: tuple[Mount, ...] = ()
    workspace_size: int = 256 * MiB
    hostname: str = "nsbox"
    env: tuple[tuple[str, str], ...] = ()
    limits: Limits = field(default_factory=Limits)
    seccomp: Seccomp = field(default_factory=Seccomp)
    audit_log: str | None = None  #: a file on the host for JSON lines of security events
    wheels: str | None = None  #: a host directory of wheels, bound read-only at /wheels (install_packages)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    #: "UID:GID" (or a pair) who owns on the host what the sandbox writes into its writable
    #: binds (as root, idmapped mounts); None: the caller (the supervisor's own ids)
    bind_owner: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.rootfs is not None:
            from ._rootfs._store import is_name, resolve  # a NAME: built or imported (nsbox rootfs)

            rootfs = str(self.rootfs)
            rootfs = resolve(rootfs) if is_name(rootfs) else canonical_path(rootfs, what=option_name("rootfs"))
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
        if self.bind_owner is not None:
            object.__setattr__(self, "bind_owner", _id_pair(self.bind_owner, "bind_owner"))
        if self.wheels is not None:
            wheels = canonical_path(str(self.wheels), what=option_name("wheels"))
            if not os.path.isdir(wheels):
                raise SpecError(option_name("wheels"), f"{wheels!r} is not a directory")
            if WHEELS in targets:
                raise SpecError((option_name("wheels"), option_name("mounts")), f"both bind something at {WHEELS}")
            object.__setattr__(self, "wheels", wheels)
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
        object.__setattr__(self, "seccomp", Seccomp.parse(self.seccomp))
        object.__setattr__(self, "network", NetworkPolicy.parse(self.network))
        if self.audit_log is not None:
            audit_log = os.path.abspath(str(self.audit_log))
            if not os.path.isdir(os.path.dirname(audit_log)) or os.path.isdir(audit_log):
                raise SpecError(option_name("audit_log"), f"{audit_log!r} is not a file in an existing directory")
            object.__setattr__(self, "audit_log", audit_log)

    # -- derived values ------------------------------------------------------------------
    @property
    def all_mounts(self) -> tuple[Mount, ...]:
        """The user's binds and the wheelhouse's."""
        return self.mounts + (() if self.wheels is None else (Mount(self.wheels, WHEELS),))

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
        if self.network.mode == "allow":
            proxy = f"http://{PROXY_ADDRESS[0]}:{PROXY_ADDRESS[1]}"
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
                env[name] = env[name.lower()] = proxy
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
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
            "seccomp": self.seccomp.to_dict(),
            "audit_log": self.audit_log,
            "wheels": self.wheels,
            "network": self.network.to_dict(),
            "bind_owner": None if self.bind_owner is None else list(self.bind_owner),
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
            data = _toml_loads(text)
        except ValueError as exc:  # TOMLDecodeError
            raise SpecError("spec", f"not valid TOML: {exc}") from None
        return cls.from_dict(data)

    def to_toml(self) -> str:
        data = self.to_dict()
        lines = [
            f"{key} = {_toml_value(data[key])}"
            for key in ("rootfs", "workspace_size", "hostname", "audit_log", "wheels")
            if data[key]
        ]
        lines.append("[env]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data["env"].items()]
        lines.append("[limits]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["limits"].items() if v is not None]
        lines.append("[network]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["network"].items() if v is not None and k != "hosts"]
        lines.append("[network.hosts]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data["network"]["hosts"].items()]
        lines.append("[seccomp]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["seccomp"].items()]
        for mount in data["mounts"]:
            lines.append("[[mounts]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in mount.items()]
        return "\n".join(lines) + "\n"


#: The largest id a user namespace maps (2**32 - 1 is the kernel's "no id").
MAX_ID = 2**32 - 2


def _id_pair(value: Any, option: str) -> tuple[int, int]:
    """``"UID:GID"``, or a pair of ids -> (uid, gid)."""
    parts = value.split(":") if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
    try:
        ids = tuple(int(p) if not isinstance(p, bool) else -1 for p in parts)
    except (TypeError, ValueError):
        ids = ()
    if len(ids) != 2 or not all(0 <= i <= MAX_ID for i in ids):
        raise SpecError(option_name(option), f"{value!r} is not UID:GID (numbers, 0 to {MAX_ID})")
    return ids[0], ids[1]


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
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_loads(text: str) -> dict[str, Any]:
    import tomllib  # ~5 ms: only for the specs and policies that are TOML

    return tomllib.loads(text)
