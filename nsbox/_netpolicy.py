"""The egress policy's decisions, as pure functions (the proxy in ``_proxy`` asks them).

An allowlist entry is a host name, ``*.domain`` (any name below domain, not domain itself),
an IP or a CIDR, each with an optional ``:port``. A request is allowed when its host matches
an entry (and the entry's port, if it names one), its port is not a sensitive one unless
the entry names that port, and EVERY address the name resolves to is outside the blocked
ranges (loopback, private, link-local and the cloud metadata address, CGNAT, multicast,
reserved, their IPv6 equivalents, and the host's own addresses) -- unless that exact address
is itself listed. A name that resolves to a blocked address is refused whatever else it
resolves to: that is how DNS rebinding is stopped, together with connecting only to the
addresses checked here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._errors import SpecError
from ._values import option_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Refused unless the exact address is listed (RFC 6890's special-purpose ranges that lead
#: somewhere private or nowhere; 198.51.100.0/24 and 203.0.113.0/24, documentation ranges,
#: stay reachable: they are what tests use as "public" hosts).
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip
#: Refused unless an entry names the port: remote shells, mail, SMB, container and cluster
#: control planes, databases and caches that trust their network.
SENSITIVE_PORTS = frozenset(
    (22, 23, 25, 110, 143, 445, 465, 587, 993, 995, 2375, 2376, 2379, 2380, 3306, 5432, 6379, 6443, 9200,
     10250, 10255, 11211, 27017)
)  # fmt: skip
_NAME_RE = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$")


@dataclass(frozen=True)
class Entry:
    """One allowlist entry: exactly one of ``name``, ``suffix`` or ``network``."""

    text: str
    name: str | None = None
    suffix: str | None = None  #: "*.example.com" -> ".example.com"
    network: IPNetwork | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Entry:
        if not isinstance(text, str) or not text.strip():
            raise SpecError(option_name("allowed_hosts"), f"{text!r} is not a host name, *.domain, IP or CIDR")
        host, port = _split_port(text.strip())
        try:
            return cls(text, network=ipaddress.ip_network(host, strict=False), port=port)
        except ValueError:
            pass
        name = host.lower().rstrip(".")
        if not _NAME_RE.match(name) or len(name) > 253:
            raise SpecError(option_name("allowed_hosts"), f"{text!r} is not a host name, *.domain, IP or CIDR")
        if name.startswith("*."):
            return cls(text, suffix=name[1:], port=port)
        return cls(text, name=name, port=port)

    def matches_host(self, host: str) -> bool:
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        host = host.lower().rstrip(".")
        if self.suffix is not None:
            return host.endswith(self.suffix)
        return host == self.name

    def exact_address(self) -> IPAddress | None:
        """The address, if this entry is one exact IP (which lifts the blocked ranges for it)."""
        if self.network is not None and self.network.num_addresses == 1:
            return self.network.network_address
        return None


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6]:port or [v6]
        host, _, rest = text[1:].partition("]")
        return host, _port(rest[1:], text) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port, text)
    return text, None


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SpecError(option_name("allowed_hosts"), f"{entry!r}: the port must be 1-65535")
    return int(text)


def parse_allowlist(entries: Iterable[str]) -> tuple[Entry, ...]:
    return tuple(Entry.parse(e) for e in entries)


class Verdict:
    """Why a request was refused (``reason``), or allowed (``reason`` None)."""

    def __init__(self, reason: str | None = None, status: int = 403) -> None:
        self.reason = reason
        self.status = status

    @property
    def allowed(self) -> bool:
        return self.reason is None


def check_host(entries: Sequence[Entry], host: str, port: int) -> Verdict:
    """The first check, before any name is resolved: is (host, port) listed at all?"""
    if not 0 < port < 65536:
        return Verdict(f"port {port} is not a port")
    matching = [e for e in entries if e.matches_host(host) and e.port in (None, port)]
    if not matching:
        return Verdict(f"{host}:{port} is not in the allowed hosts")
    if port in SENSITIVE_PORTS and not any(e.port == port for e in matching):
        return Verdict(f"port {port} is refused unless an allowed host names it ({host}:{port})")
    return Verdict()


def check_addresses(entries: Sequence[Entry], addresses: Sequence[IPAddress], own: Iterable[IPAddress]) -> Verdict:
    """The second check, on what the host resolved to: all of it must be reachable."""
    if not addresses:
        return Verdict("the name did not resolve", 502)
    listed = {a for a in (e.exact_address() for e in entries) if a is not None}
    own_addresses = set(own)
    for address in addresses:
        if address in listed:
            continue
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if address in own_addresses or (mapped is not None and mapped in own_addresses):
            return Verdict(f"{address} is an address of this host")
        if any(address in network for network in BLOCKED_NETWORKS) or (
            mapped is not None and any(mapped in network for network in BLOCKED_NETWORKS)
        ):
            return Verdict(f"{address} is in a blocked range (private, loopback, link-local, metadata...)")
    return Verdict()
