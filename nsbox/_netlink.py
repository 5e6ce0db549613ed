"""Network namespaces and their links, by netlink (pyroute2), never by ``ip`` commands.

What nsbox builds in network namespaces other than a sandbox's own, where the sandbox
cannot reach: the tests' and the benchmark's stand-in internet (a namespace whose loopback
holds the test hosts' addresses, servers started inside it, sandboxes connecting out from
it as their ``NetworkPolicy.uplink``; for routed mode an uplink forwarding into it through a
veth pair). Routed mode's own veth pairs are built by its router (``_routed._router``).

pyroute2 costs ~180 ms to import, so nothing on a sandbox's path imports this module; the
one-interface step a sandbox needs (``lo`` up) is an ioctl in ``_net``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess  # nosec B404  # Popen of the caller's argv, no shell
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute, netns

from . import _linux
from ._net import run_in_namespace, write_sysctl

#: Where named network namespaces live (as ``ip netns``): a bind mount of each, by name.
NETNS_DIR = "/run/netns"
#: How long close() retries removing a namespace that is still busy.
REMOVE_TIMEOUT = 10.0
IFA_F_NODAD = 0x02  #: an IPv6 address without duplicate address detection


class NetNamespace:
    """A named network namespace (``/run/netns/NAME``, as ``ip netns add``) with its ``lo``
    up, made here and removed by ``close()``: what it holds goes with its last process."""

    def __init__(self, name: str) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a namespace name")
        self.name = name
        self.path = f"{NETNS_DIR}/{name}"
        if os.path.exists(self.path):
            raise FileExistsError(f"a network namespace named {name!r} exists already")
        netns.create(name)
        try:
            with self._ipr() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        except BaseException:
            self.close()
            raise

    def add_local_addresses(self, addresses: Iterable[str]) -> None:
        """Each address on ``lo`` (a /32, or /128): servers in the namespace can bind it,
        and a connection made from the namespace to it stays inside."""
        with self._ipr() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            for text in dict.fromkeys(addresses):
                address = ipaddress.ip_address(text)
                if address.is_loopback:
                    continue  # on lo already
                flags = IFA_F_NODAD if address.version == 6 else 0  # usable at once
                ipr.addr("add", index=lo, address=str(address), prefixlen=address.max_prefixlen, flags=flags)

    @classmethod
    def existing(cls, name: str) -> NetNamespace:
        """A namespace made elsewhere (``/run/netns/NAME``), to look at: close() removes it too."""
        namespace = cls.__new__(cls)
        namespace.name, namespace.path = name, f"{NETNS_DIR}/{name}"
        if not os.path.exists(namespace.path):
            raise FileNotFoundError(namespace.path)
        return namespace

    def link_to(self, other: NetNamespace, name: str, here: str, there: str) -> None:
        """A veth pair between this namespace and ``other``, both ends named ``name`` and up,
        with the addresses ``here`` and ``there`` (each ``IP/PREFIX``)."""
        fd = os.open(other.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._ipr() as ipr:
                ipr.link("add", ifname=name, kind="veth", peer={"ifname": name, "net_ns_fd": fd})
        finally:
            os.close(fd)
        for namespace, address in ((self, here), (other, there)):
            with namespace._ipr() as ipr:
                index = ipr.link_lookup(ifname=name)[0]
                interface = ipaddress.ip_interface(address)
                ipr.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
                ipr.link("set", index=index, state="up")

    def default_route(self, gateway: str) -> None:
        with self._ipr() as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)

    def sysctl(self, name: str, value: str) -> None:
        """A sysctl of this namespace (``net.ipv4.ip_forward``): written by a child inside."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            run_in_namespace(fd, lambda: write_sysctl(name, value), f"setting {name} in {self.name}")
        finally:
            os.close(fd)

    def forward_into(self, other: NetNamespace, name: str, link: ipaddress.IPv4Network) -> None:
        """Make this namespace a router into ``other``: a veth pair ``name`` on ``link`` (a /30:
        its first host here, its second there), forwarding on here, each side's default route
        through the other."""
        here, there = (str(a) for a in list(link.hosts())[:2])
        self.link_to(other, name, f"{here}/{link.prefixlen}", f"{there}/{link.prefixlen}")
        self.sysctl("net.ipv4.ip_forward", "1")
        self.default_route(there)
        other.default_route(here)

    def link_names(self) -> list[str]:
        with self._ipr() as ipr:
            return [str(link.get("IFLA_IFNAME")) for link in ipr.get_links()]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``argv`` started inside the namespace (subprocess.Popen's keyword arguments)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return subprocess.Popen(  # nosec B603  # the caller's argv, no shell
                list(argv), preexec_fn=lambda: _linux.setns(fd, _linux.CLONE_NEWNET), **kwargs
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        """Remove the name (the namespace goes once nothing uses it); retried while busy."""
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while os.path.exists(self.path):
            try:
                netns.remove(self.name)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _ipr(self) -> IPRoute:
        return IPRoute(netns=self.name)

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def global_ipv4_addresses() -> list[ipaddress.IPv4Interface]:
    """The global-scope IPv4 addresses of this process's network namespace, with their prefix."""
    with IPRoute() as ipr:
        found = []
        for message in ipr.get_addr(family=socket.AF_INET):
            if message["scope"] == 0:  # RT_SCOPE_UNIVERSE
                found.append(ipaddress.IPv4Interface(f"{message.get('IFA_ADDRESS')}/{message['prefixlen']}"))
        return found
