"""The addresses routed mode uses, and the kernel-side form of the allowlist's address rules.

Every sandbox sees the same gateway (``GATEWAY``, also its resolver); its own address, and
the name of its veth's outer end, come from a slot that the router claims in the uplink
namespace by creating that interface (creation is atomic: a slot in use fails with EEXIST).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable

from .._netpolicy import BLOCK, SPECIAL_PURPOSE, Entry, IPAddress, special_purpose

SUBNET = ipaddress.IPv4Network("10.200.0.0/16")
GATEWAY = ipaddress.IPv4Address("10.200.0.1")
SLOTS = SUBNET.num_addresses - 3  #: .0, the gateway and the broadcast address are no sandbox's
DNS_PORT = 53


def sandbox_address(slot: int) -> ipaddress.IPv4Address:
    return SUBNET.network_address + 2 + slot


def outer_name(slot: int) -> str:
    return f"nsbox{slot}"


def table_name(slot: int) -> str:
    return f"nsbox-{slot}"


def blocked_intervals(own: Iterable[IPAddress]) -> list[tuple[int, int]]:
    """The IPv4 destinations refused unless listed exactly, as disjoint [start, end) intervals:
    every special-purpose range whose most specific entry blocks (as ``_netpolicy`` decides
    for the proxy) and each of ``own`` (the host's and the uplink's addresses)."""
    edges = {0, 1 << 32}
    for special in SPECIAL_PURPOSE:
        if special.network.version == 4:
            edges |= {int(special.network.network_address), int(special.network.broadcast_address) + 1}
    own4 = {int(a) for a in own if a.version == 4}
    for value in own4:
        edges |= {value, value + 1}
    points = sorted(edges)
    intervals: list[tuple[int, int]] = []
    for start, end in itertools.pairwise(points):
        holder = special_purpose(ipaddress.IPv4Address(start))
        if start in own4 or (holder is not None and holder.action == BLOCK):
            if intervals and intervals[-1][1] == start:
                intervals[-1] = (intervals[-1][0], end)
            else:
                intervals.append((start, end))
    return intervals


def listed_addresses(
    entries: Iterable[Entry],
) -> tuple[list[ipaddress.IPv4Address], list[tuple[ipaddress.IPv4Address, int]], list[ipaddress.IPv4Network]]:
    """The allowlist's IPv4 entries: exact addresses for any port, exact (address, port)
    pairs (both pass even a blocked range), and networks (any port; a port on a network is
    refused by NetworkPolicy in this mode)."""
    exact: list[ipaddress.IPv4Address] = []
    pairs: list[tuple[ipaddress.IPv4Address, int]] = []
    networks: list[ipaddress.IPv4Network] = []
    for entry in entries:
        network = entry.network
        if network is None or network.version != 4:
            continue
        if network.prefixlen < 32:
            networks.append(ipaddress.IPv4Network(network))
        elif entry.port is None:
            exact.append(ipaddress.IPv4Address(network.network_address))
        else:
            pairs.append((ipaddress.IPv4Address(network.network_address), entry.port))
    return exact, pairs, list(ipaddress.collapse_addresses(networks))
