"""The egress policy's decisions, as pure functions (the proxy in ``_proxy`` asks them).

An allowlist entry is a host name, ``*.domain`` (any name below domain, not domain itself),
an IP or a CIDR, each with an optional ``:port``. A request is allowed when its host matches
an entry (and the entry's port, if it names one), its port is not a sensitive one unless
the entry names that port, and EVERY address the name resolves to is either listed as an
exact IP or allowed here. An address is refused when it is one of the host's own, or falls
in a blocked special-purpose range (``SPECIAL_PURPOSE``: IANA's IPv4 and IPv6 special-purpose
registries, and IPv6 outside the global unicast space 2000::/3), decided by the most specific
range that holds it. The IPv6 forms that embed an IPv4 address (mapped, compatible, SIIT,
NAT64, 6to4, Teredo) have that IPv4 extracted and checked too: the translating ones that are
globally reachable (well-known NAT64, 6to4, Teredo) are allowed only when every IPv4 they
embed is; the others are refused whatever they embed. A name that resolves to a refused
address is refused whatever else it resolves to: that is how DNS rebinding is stopped,
together with connecting only to the addresses checked here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ._errors import SpecError
from ._values import option_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What a special-purpose range means for a destination: refused; refused, naming the IPv4 it
#: embeds; allowed when the IPv4 it embeds is (a translation that reaches that IPv4); allowed.
BLOCK, BLOCK_EMBEDDING, ALLOW_IF_EMBEDDED_IS, ALLOW = "block", "block-embedding", "allow-if-embedded-is", "allow"
#: An IPv6 form's embedded IPv4 addresses (from the address as an int), each with a label.
Extract = Callable[[int], list[tuple[str, int]]]


def _low32(value: int) -> list[tuple[str, int]]:
    return [("", value & 0xFFFFFFFF)]  # RFC 4291 2.5.5, RFC 2765 2.1, RFC 6052 2.2 (a /96 prefix)


def _sixtofour(value: int) -> list[tuple[str, int]]:
    return [("", (value >> 80) & 0xFFFFFFFF)]  # RFC 3056 2: 2002:V4ADDR::/48, bits 16-47


def _teredo(value: int) -> list[tuple[str, int]]:
    # RFC 4380 4: 2001:0:SERVER:FLAGS:PORT:CLIENT, the client's port and address inverted
    return [("server ", (value >> 64) & 0xFFFFFFFF), ("client ", ~value & 0xFFFFFFFF)]


@dataclass(frozen=True)
class Special:
    """A special-purpose range, what to do with a destination in it, and why (for the reason)."""

    network: IPNetwork
    action: str
    what: str
    embedded: Extract | None = None  #: the IPv4 it embeds, labelled


def _table(*rows: tuple[str, str, str] | tuple[str, str, str, Extract]) -> tuple[Special, ...]:
    return tuple(Special(ipaddress.ip_network(row[0]), *row[1:]) for row in rows)


#: Every special-purpose range, written out (not Python's ipaddress.is_private/is_global, whose
#: answers change between versions). The MOST SPECIFIC range holding an address decides; an
#: address in none is allowed. An exact IP in the allowlist lifts the block for that IP only.
SPECIAL_PURPOSE: tuple[Special, ...] = _table(
    # IANA IPv4 Special-Purpose Address Registry (RFC 6890, RFC 8190): the entries that are not
    # globally reachable, and multicast (IANA IPv4 Multicast Address Space, RFC 5771). Not
    # blocked, as the registry has them globally reachable: 192.31.196.0/24 (AS112-v4, RFC
    # 7535), 192.52.193.0/24 (AMT, RFC 7450), 192.175.48.0/24 (AS112 direct delegation, RFC 7534).
    ("0.0.0.0/8", BLOCK, '"this network" (RFC 791 3.2; 0.0.0.0/32 "this host", RFC 1122)'),
    ("10.0.0.0/8", BLOCK, "private-use (RFC 1918)"),
    ("100.64.0.0/10", BLOCK, "shared address space, CGNAT (RFC 6598)"),
    ("127.0.0.0/8", BLOCK, "loopback (RFC 1122)"),
    ("169.254.0.0/16", BLOCK, "link-local, with the cloud metadata address (RFC 3927)"),
    ("172.16.0.0/12", BLOCK, "private-use (RFC 1918)"),
    # whole, its two globally reachable anycast /32s (PCP 192.0.0.9, TURN 192.0.0.10) included
    ("192.0.0.0/24", BLOCK, "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", BLOCK, "documentation, TEST-NET-1 (RFC 5737)"),
    ("192.88.99.0/24", BLOCK, "6to4 relay anycast, deprecated (RFC 7526)"),
    ("192.168.0.0/16", BLOCK, "private-use (RFC 1918)"),
    ("198.18.0.0/15", BLOCK, "benchmarking (RFC 2544)"),
    # Deliberately NOT blocked, although the registry has them not globally reachable: the
    # tests use them as "public" hosts in network namespaces of their own.
    ("198.51.100.0/24", ALLOW, "documentation, TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", ALLOW, "documentation, TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", BLOCK, "multicast (RFC 5771)"),
    ("240.0.0.0/4", BLOCK, "reserved (RFC 1112 4)"),
    ("255.255.255.255/32", BLOCK, "limited broadcast (RFC 919, RFC 8190)"),
    #
    # IANA IPv6 Special-Purpose Address Registry (RFC 6890, RFC 8190): the entries that are not
    # globally reachable, and the forms that embed an IPv4 address.
    ("::/128", BLOCK, "unspecified (RFC 4291)"),
    ("::1/128", BLOCK, "loopback (RFC 4291)"),
    ("::/96", BLOCK_EMBEDDING, "IPv4-compatible, deprecated (RFC 4291 2.5.5.1)", _low32),
    ("::ffff:0:0/96", BLOCK_EMBEDDING, "IPv4-mapped (RFC 4291 2.5.5.2)", _low32),
    ("::ffff:0:0:0/96", BLOCK_EMBEDDING, "IPv4-translated, SIIT (RFC 2765 2.1)", _low32),
    # globally reachable per IANA, and RFC 6052 3.1 forbids it for non-global IPv4: decided by the IPv4
    ("64:ff9b::/96", ALLOW_IF_EMBEDDED_IS, "NAT64 well-known prefix (RFC 6052)", _low32),
    # not globally reachable; the IPv4 named is the one at the /96 position (RFC 6052 2.2)
    ("64:ff9b:1::/48", BLOCK_EMBEDDING, "NAT64 local-use prefix (RFC 8215)", _low32),
    ("100::/64", BLOCK, "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", BLOCK, "dummy prefix (RFC 9780)"),
    # whole, its globally reachable exceptions (the PCP, TURN and DNS-SD anycast /128s, AMT
    # 2001:3::/32, AS112-v6 2001:4:112::/48, ORCHIDv2, drone remote ID) included; but Teredo:
    ("2001::/23", BLOCK, "IETF protocol assignments (RFC 2928)"),
    ("2001::/32", ALLOW_IF_EMBEDDED_IS, "Teredo (RFC 4380, RFC 8190)", _teredo),
    ("2001:2::/48", BLOCK, "benchmarking (RFC 5180)"),
    ("2001:10::/28", BLOCK, "ORCHID, deprecated (RFC 4843)"),
    ("2001:20::/28", BLOCK, "ORCHIDv2 (RFC 7343)"),
    # Deliberately NOT blocked (as TEST-NET-2 and -3 above): the tests' "public" IPv6.
    ("2001:db8::/32", ALLOW, "documentation (RFC 3849)"),
    ("2002::/16", ALLOW_IF_EMBEDDED_IS, "6to4 (RFC 3056)", _sixtofour),
    ("3fff::/20", BLOCK, "documentation (RFC 9637)"),
    ("5f00::/16", BLOCK, "segment routing (SRv6) SIDs (RFC 9602)"),
    ("fc00::/7", BLOCK, "unique local (RFC 4193, RFC 8190)"),
    ("fe80::/10", BLOCK, "link-local unicast (RFC 4291)"),
    ("fec0::/10", BLOCK, "site-local, deprecated (RFC 3879)"),
    ("ff00::/8", BLOCK, "multicast (RFC 4291)"),
    #
    # IANA Internet Protocol Version 6 Address Space: all but 2000::/3 (global unicast) is
    # reserved by the IETF (RFC 4291 2.4), so refused unless a more specific range above says.
    ("::/3", BLOCK, "reserved by the IETF, outside the global unicast 2000::/3 (RFC 4291)"),
    ("4000::/2", BLOCK, "reserved by the IETF, outside the global unicast 2000::/3 (RFC 4291)"),
    ("8000::/1", BLOCK, "reserved by the IETF, outside the global unicast 2000::/3 (RFC 4291)"),
)
#: The ranges refused whatever else (unless the exact address is listed). The translating ones
#: (well-known NAT64, 6to4, Teredo) are not here: they are refused when what they embed is.
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    s.network for s in SPECIAL_PURPOSE if s.action in (BLOCK, BLOCK_EMBEDDING)
)
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


def special_purpose(address: IPAddress) -> Special | None:
    """The most specific special-purpose range that holds ``address``, if any."""
    found = None
    for special in SPECIAL_PURPOSE:
        if (
            special.network.version == address.version
            and address in special.network
            and (found is None or special.network.prefixlen > found.network.prefixlen)
        ):
            found = special
    return found


def _ipv4_problem(address: ipaddress.IPv4Address, own: set[IPAddress]) -> str | None:
    """Why an IPv4 (one resolved, or one embedded in an IPv6) is refused, or None."""
    if address in own:
        return "an address of this host"
    special = special_purpose(address)
    if special is not None and special.action == BLOCK:
        return f"in a blocked range, {special.network}: {special.what}"
    return None


def blocked_reason(address: IPAddress, own: Iterable[IPAddress]) -> str | None:
    """Why ``address`` is refused as a destination (the host's own, or in a blocked range,
    itself or through the IPv4 it embeds), or None. The allowlist's exact IPs are not asked
    about here (``check_addresses`` lets them through first)."""
    own_addresses = set(own)
    if address in own_addresses:
        return f"{address} is an address of this host"
    if isinstance(address, ipaddress.IPv4Address):
        problem = _ipv4_problem(address, own_addresses)
        return None if problem is None else f"{address} is {problem}"
    special = special_purpose(address)
    if special is None or special.action == ALLOW:
        return None
    if special.embedded is None:
        return f"{address} is in a blocked range, {special.network}: {special.what}"
    problems = []
    for label, value in special.embedded(int(address)):
        embedded = ipaddress.IPv4Address(value)
        problems.append((f"{label}{embedded}", _ipv4_problem(embedded, own_addresses)))
    if special.action == BLOCK_EMBEDDING:  # refused whatever it embeds; the reason names it
        what, problem = problems[0]
        tail = f", itself {problem}" if problem else ""
        return f"{address} is in a blocked range, {special.network}: {special.what}, embedding {what}{tail}"
    for what, problem in problems:  # ALLOW_IF_EMBEDDED_IS
        if problem is not None:
            return f"{address} is a {special.what} address ({special.network}) embedding {what}, which is {problem}"
    return None


def check_addresses(entries: Sequence[Entry], addresses: Sequence[IPAddress], own: Iterable[IPAddress]) -> Verdict:
    """The second check, on what the host resolved to: all of it must be reachable."""
    if not addresses:
        return Verdict("the name did not resolve", 502)
    listed = {a for a in (e.exact_address() for e in entries) if a is not None}
    own_addresses = set(own)
    for address in addresses:
        if address in listed:
            continue
        reason = blocked_reason(address, own_addresses)
        if reason is not None:
            return Verdict(reason)
    return Verdict()
