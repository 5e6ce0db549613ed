"""The router of a sandbox whose network policy is ``routed``: one process per sandbox, in
the uplink namespace, forked by the supervisor once the sandbox's namespaces exist.

It claims a slot (``_addresses``) by creating the veth pair, the inner end straight in the
sandbox's network namespace as ``eth0``; configures both ends (pyroute2; IPv6 off on both,
so that no link-local address opens a way to the uplink's services); installs the sandbox's
nftables table (``_nft``, owned by this process's socket); then answers the sandbox's DNS
until the supervisor ends it with SIGTERM (or dies: the parent-death signal is SIGTERM too),
when it writes one ``network`` audit event per destination (bytes each way, or packets
dropped) and removes the veth, then the table. Killed instead, it leaves its table (owned,
persistent): the sandbox stays filtered, and the next router in the uplink sweeps the table
once the veth has gone with the sandbox's namespace. Connections are marked with a random
mark of this router's: only they count as the sandbox's replies, not one that a former
sandbox of the same slot left in conntrack.

The kernel enforces, in the uplink namespace (``install``): out of the sandbox only IPv4
TCP and UDP, at most ``rate`` new connections a second, to an address that is listed, or
that a DNS answer of this router allowed and whose TTL has not run out; never to a blocked
range or the host's or the uplink's own addresses unless listed exactly; a sensitive port
only where an entry names it; ``max_bytes`` both ways; into the sandbox only replies; to
the uplink itself nothing. Everything else is dropped and counted.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import secrets
import selectors
import signal
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import prctl

from .. import _linux
from .._audit import AuditLog
from .._egress import HelperFailed, RateBucket, fork_helper, own_addresses
from .._errors import SetupError
from .._fds import close_all_but, stdio_to_devnull
from .._net import run_in_namespace, socket_in_namespace, write_sysctl
from .._netpolicy import SENSITIVE_PORTS, Entry, IPAddress, check_addresses, parse_allowlist
from .._spec import NetworkPolicy
from . import _dns, _nft
from ._addresses import (
    DNS_PORT,
    GATEWAY,
    SLOTS,
    SUBNET,
    blocked_intervals,
    listed_addresses,
    outer_name,
    sandbox_address,
    table_name,
)

INNER_NAME = "eth0"
MAX_ELEMENTS = 65536  #: per set: addresses allowed by DNS, destinations counted
MAX_DROPPED = 4096  #: refused destinations (address, port) counted one by one
MAX_LOGGED = 256  #: of those, logged one by one at close (the most packets first); the rest in one sum
HOSTS_TTL = 60  #: seconds an answer from NetworkPolicy.hosts is good for
MAX_TTL = 86400  #: longest an answer keeps its addresses reachable
RESOLVER_ADDRESS = ("127.0.0.1", 53)  #: where the sandbox's DNS queries go: glibc's default, no resolv.conf needed
DNS_TIMEOUT = 5.0  #: seconds to wait for the upstream resolver
DNS_RATE = 100  #: queries a second the gateway takes from one sandbox
_ICMP, _TCP, _UDP = 1, 6, 17


@dataclass
class _Refused(Exception):
    """Routed mode cannot run here as asked: a SetupError for the supervisor."""

    stage: str
    detail: str
    remedy: str


def preload() -> None:
    """Import what the router imports late (pyroute2, ~180 ms), in a process that will fork
    routers: the spawner, on its first routed sandbox."""
    import pyroute2
    import pyroute2.netlink.exceptions  # noqa: F401


def system_resolver() -> tuple[str, int] | None:
    """The first IPv4 nameserver of this host's /etc/resolv.conf."""
    with contextlib.suppress(OSError), open("/etc/resolv.conf", encoding="utf-8") as conf:
        for line in conf:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(parts[1]).version == 4:
                        return parts[1], DNS_PORT
    return None


def start(policy: NetworkPolicy, netns_fd: int, audit: AuditLog) -> tuple[int, int]:
    """Fork the router; returns its pid and a pidfd once the sandbox's ``eth0`` is up, its
    table installed and its DNS answering; raises SetupError if routed mode cannot run."""
    own = own_addresses()
    resolver = policy.resolver_address() or system_resolver()
    try:
        return fork_helper(
            policy.uplink, lambda uplink, ready: _main(policy, netns_fd, uplink, ready, own, resolver, audit)
        )
    except HelperFailed as failed:
        try:
            refusal = json.loads(failed.report)
        except ValueError:
            refusal = {"stage": "start the router", "detail": str(failed)}
        raise SetupError(refusal["stage"], detail=refusal["detail"], remedy=refusal.get("remedy", "")) from None


def _main(
    policy: NetworkPolicy,
    netns_fd: int,
    uplink: int | None,
    ready: int,
    own: tuple[IPAddress, ...],
    resolver: tuple[str, int] | None,
    audit: AuditLog,
) -> None:
    router = None
    try:
        prctl.set_pdeathsig(signal.SIGTERM)  # the supervisor gone: end as at close, the table deleted
        prctl.set_name("nsbox-router")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the CLI's to handle
        stdio_to_devnull()
        close_all_but(0, 1, 2, ready, netns_fd, *([uplink] if uplink is not None else []), *audit.fds())
        if uplink is not None:
            _linux.setns(uplink, _linux.CLONE_NEWNET)
            os.close(uplink)
        router = Router(policy, own, resolver, audit)
        router.build(netns_fd)
        os.close(netns_fd)
    except Exception as exc:  # any failure is reported to the supervisor, whole
        if isinstance(exc, _Refused):
            failure = exc.__dict__
        else:
            failure = {
                "stage": getattr(exc, "call", None) or "set up the routed network",
                "detail": f"{type(exc).__name__}: {exc}",
            }
        os.write(ready, json.dumps(failure).encode()[:4000])
        if router is not None:
            router.teardown()
        return
    os.write(ready, b"ok")
    os.close(ready)
    router.serve()


class Router:
    def __init__(
        self, policy: NetworkPolicy, own: tuple[IPAddress, ...], resolver: tuple[str, int] | None, audit: AuditLog
    ) -> None:
        self.policy = policy
        self.entries = parse_allowlist(policy.allowed_hosts)
        self.hosts = dict(policy.hosts)
        self.own = set(own)
        self.resolver = resolver
        self.audit = audit
        self.slot: int | None = None
        self.nft: _nft.Nft | None = None
        self.dns: socket.socket | None = None
        self.table = ""
        self.queries = RateBucket(DNS_RATE)
        self.mark = 1 + secrets.randbelow(0xFFFFFFFE)  #: this router's conntrack mark

    # -- set-up ------------------------------------------------------------------------------
    def build(self, netns_fd: int) -> None:
        _check_forwarding()
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for message in ipr.get_addr(family=socket.AF_INET):
                address = ipaddress.IPv4Address(message.get("IFA_ADDRESS"))
                label = message.get("IFA_LABEL") or ""
                if address in SUBNET and not label.startswith("nsbox"):
                    raise _Refused(
                        "choose the sandbox's addresses",
                        f"the uplink namespace has {address} ({label}), inside {SUBNET}, which routed mode uses",
                        f"routed mode needs {SUBNET} free in the uplink namespace: use another --net-uplink",
                    )
                if address != GATEWAY:
                    self.own.add(address)
            self.slot = self._claim(ipr, netns_fd)
            outer = outer_name(self.slot)
            self.table = table_name(self.slot)
            self.nft = _nft.Nft()
            _sweep_orphans(self.nft, ipr, self.table)
            self.install(self.nft, outer)  # the filter in place before either end is up
            index = ipr.link_lookup(ifname=outer)[0]
            write_sysctl(f"net.ipv6.conf.{outer}.disable_ipv6", "1")
            ipr.addr("add", index=index, address=str(GATEWAY), prefixlen=32)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst=f"{sandbox_address(self.slot)}/32", oif=index, scope=253)  # RT_SCOPE_LINK
        address = sandbox_address(self.slot)
        run_in_namespace(netns_fd, lambda: _configure_inner(address), f"configuring the sandbox's {INNER_NAME}")
        self.dns = socket_in_namespace(netns_fd, None, socket.SOCK_DGRAM, RESOLVER_ADDRESS)
        self.dns.setblocking(False)

    def _claim(self, ipr: object, netns_fd: int) -> int:
        from pyroute2.netlink.exceptions import NetlinkError

        first = secrets.randbelow(SLOTS)
        for i in range(SLOTS):
            slot = (first + i) % SLOTS
            try:
                ipr.link(  # type: ignore[attr-defined]
                    "add", ifname=outer_name(slot), kind="veth", peer={"ifname": INNER_NAME, "net_ns_fd": netns_fd}
                )
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    continue
                raise
            return slot
        raise _Refused("claim an address", f"all {SLOTS} routed sandbox addresses are in use", "close some sandboxes")

    def install(self, nft: _nft.Nft, outer: str) -> None:
        t = self.table
        exact, pairs, networks = listed_addresses(self.entries)
        nft.table(t, _nft.TABLE_F_OWNER | _nft.TABLE_F_PERSIST)
        try:
            nft.commit()
        except _nft.NftError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            raise _Refused(  # an unowned table could be flushed or swept while the sandbox runs
                "create the sandbox's nftables table",
                "this kernel has no persistent owned nftables tables (NFT_TABLE_F_PERSIST, Linux 6.9)",
                "use Linux 6.9 or newer for --net routed, or --net allow (the egress proxy)",
            ) from None
        nft.chain(t, "forward", _nft.HOOK_FORWARD)
        nft.chain(t, "input", _nft.HOOK_INPUT)
        nft.chain(t, "output", _nft.HOOK_OUTPUT)
        nft.chain(t, "postrouting", _nft.HOOK_POSTROUTING, 100, "nat")
        for chain in ("egress", "ingress", "destination", "admit_out", "admit_in", "volume", "refuse"):
            nft.chain(t, chain)
        nft.set(t, "listed", _nft.TYPE_IPADDR, 4)
        nft.set(t, "ports", _PAIR_TYPE, 8, _nft.SET_TIMEOUT, MAX_ELEMENTS)  # address . port
        nft.set(t, "networks", _nft.TYPE_IPADDR, 4, _nft.SET_INTERVAL)
        nft.set(t, "blocked", _nft.TYPE_IPADDR, 4, _nft.SET_INTERVAL)
        nft.set(t, "resolved", _nft.TYPE_IPADDR, 4, _nft.SET_TIMEOUT, MAX_ELEMENTS)
        nft.set(t, "sensitive", _nft.TYPE_INET_SERVICE, 2)
        # per-destination counters for the audit log; a full one (a scan) only stops counting:
        # an update that cannot add breaks its rule, so no verdict rides on one
        nft.set(t, "sent", _nft.TYPE_IPADDR, 4, _nft.SET_EVAL, MAX_ELEMENTS, counted=True)
        nft.set(t, "received", _nft.TYPE_IPADDR, 4, _nft.SET_EVAL, MAX_ELEMENTS, counted=True)
        nft.set(t, "dropped", _PAIR_TYPE, 8, _nft.SET_EVAL, MAX_DROPPED, counted=True)
        refuse = _nft.verdict(_nft.JUMP, "refuse")
        admit_out = _nft.verdict(_nft.JUMP, "admit_out")
        # A connection is this sandbox's when it carries this router's mark (set when admitted):
        # one that a former sandbox of the same slot left in conntrack is not.
        ours = _nft.ct_mark_is(self.mark)
        established = [*_nft.ct_state_in(_nft.CT_ESTABLISHED), *ours]
        related_icmp = [*_nft.ct_state_in(_nft.CT_RELATED), *_nft.l4proto_is(_ICMP), *ours]  # errors, not helpers
        nft.rule(t, "forward", [*_nft.iifname_is(outer), _nft.verdict(_nft.JUMP, "egress")])
        nft.rule(t, "forward", [*_nft.oifname_is(outer), _nft.verdict(_nft.JUMP, "ingress")])
        # out of the sandbox
        nft.rule(t, "egress", [*_nft.nfproto_is_not_ipv4(), _nft.counter(), _nft.verdict(_nft.DROP)])
        nft.rule(t, "egress", [*established, admit_out])
        nft.rule(t, "egress", [*related_icmp, admit_out])
        nft.rule(t, "egress", [_nft.limit_over(self.policy.rate), refuse])
        for proto in (_TCP, _UDP):
            nft.rule(t, "egress", [*_nft.l4proto_is(proto), _nft.verdict(_nft.JUMP, "destination")])
        nft.rule(t, "egress", [refuse])
        # where a new connection may go (a return here is a refusal, in egress)
        nft.rule(t, "destination", [*_nft.daddr_dport(), _nft.lookup("ports", _nft.REG32_00), admit_out])
        nft.rule(t, "destination", [_nft.dport(), _nft.lookup("sensitive"), _nft.verdict(_nft.RETURN)])
        nft.rule(t, "destination", [_nft.daddr(), _nft.lookup("listed"), admit_out])
        nft.rule(t, "destination", [_nft.daddr(), _nft.lookup("blocked"), _nft.verdict(_nft.RETURN)])
        nft.rule(t, "destination", [_nft.daddr(), _nft.lookup("resolved"), admit_out])
        nft.rule(t, "destination", [_nft.daddr(), _nft.lookup("networks"), admit_out])
        # what is let out: the byte budget, the mark, the count, then accepted
        nft.rule(t, "admit_out", [_nft.verdict(_nft.JUMP, "volume")])
        nft.rule(t, "admit_out", _nft.ct_mark_set(self.mark))
        nft.rule(t, "admit_out", [_nft.daddr(), _nft.update("sent")])
        nft.rule(t, "admit_out", [_nft.verdict(_nft.ACCEPT)])
        # into the sandbox: replies to its own connections only (from the uplink too)
        admit_in = _nft.verdict(_nft.JUMP, "admit_in")
        nft.rule(t, "ingress", [*established, admit_in])
        nft.rule(t, "ingress", [*related_icmp, admit_in])
        nft.rule(t, "ingress", [_nft.counter(), _nft.verdict(_nft.DROP)])
        nft.rule(t, "output", [*_nft.oifname_is(outer), _nft.verdict(_nft.JUMP, "ingress")])
        nft.rule(t, "admit_in", [_nft.verdict(_nft.JUMP, "volume")])
        nft.rule(t, "admit_in", [_nft.saddr(), _nft.update("received")])
        nft.rule(t, "admit_in", [_nft.verdict(_nft.ACCEPT)])
        if self.policy.max_bytes is not None:  # both ways together, only what is let through counts
            nft.rule(t, "volume", [_nft.quota_over(self.policy.max_bytes), _nft.counter(), _nft.verdict(_nft.DROP)])
        # to the uplink itself: nothing (the sandbox's resolver is a socket in its own namespace)
        nft.rule(t, "input", [*_nft.iifname_is(outer), refuse])
        # every refusal: counted per destination (while the set has room), then dropped whatever
        nft.rule(t, "refuse", [*_nft.daddr_dport(), _nft.update("dropped", _nft.REG32_00)])
        nft.rule(t, "refuse", [_nft.counter(), _nft.verdict(_nft.DROP)])
        address = sandbox_address(self.slot or 0)
        from_sandbox = [*_nft.nfproto_is_ipv4(), *_nft.saddr_is(address.packed)]
        nft.rule(t, "postrouting", [*from_sandbox, *_nft.oifname_is(outer, _nft.NEQ), _nft.masquerade()])
        nft.commit()
        elements: list[tuple[str, list[tuple[bytes, int | None, int]]]] = [
            ("listed", [(a.packed, None, 0) for a in exact]),
            ("ports", [(_pair_key(a, p), None, 0) for a, p in pairs]),
            ("networks", _interval_elements((int(n.network_address), int(n.broadcast_address) + 1) for n in networks)),
            ("blocked", _interval_elements(blocked_intervals(self.own))),
            ("sensitive", [(struct.pack(">H", p), None, 0) for p in sorted(SENSITIVE_PORTS)]),
        ]
        for name, keys in elements:
            if keys:
                nft.elements(t, name, keys)
        nft.commit()

    # -- the sandbox's DNS -------------------------------------------------------------------
    def serve(self) -> None:
        assert self.dns is not None  # nosec B101  # built
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.dns, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fd == wake_r:
                    self.finish()
                    return
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    packet, peer = self.dns.recvfrom(_dns.MAX_UDP)
                    if not self.queries.take():
                        continue  # over DNS_RATE: dropped, as a busy resolver would
                    try:
                        reply = self.answer(packet)
                    except OSError as exc:  # the table refused (a full set): this answer fails, not the router
                        self._log("?", "refused", f"the filter could not take the answer: {exc}")
                        reply = _dns.error(packet, _dns.SERVFAIL)
                    if reply is not None:
                        with contextlib.suppress(OSError):
                            self.dns.sendto(reply, peer)

    def answer(self, packet: bytes) -> bytes | None:
        try:
            query = _dns.parse_query(packet)
        except ValueError:
            return _dns.error(packet, _dns.FORMERR)
        if query.qclass != _dns.CLASS_IN:
            return _dns.answer(query, _dns.NOTIMP)
        matching = [e for e in self.entries if e.network is None and e.matches_host(query.name)]
        if not matching:
            self._log(query.name, "refused", "the name is not in the allowed hosts")
            return _dns.answer(query, _dns.NXDOMAIN)
        if query.qtype != _dns.TYPE_A:  # the sandbox has IPv4 only: no AAAA (or other) records
            return _dns.answer(query, _dns.NOERROR)
        records, failure = self._resolve(query.name)
        if failure is not None:
            self._log(query.name, "refused", failure)
            return _dns.answer(query, _dns.SERVFAIL)
        addresses: list[IPAddress] = [a for a, _ in records]
        verdict = check_addresses(self.entries, addresses, self.own)
        if not verdict.allowed:
            self._log(query.name, "refused", verdict.reason, addresses=addresses)
            return _dns.answer(query, _dns.REFUSED)
        self._allow(records, matching)
        ttls = {str(a): ttl for a, ttl in records}
        self._log(query.name, "allowed", None, addresses=addresses, ttl=ttls)
        return _dns.answer(query, _dns.NOERROR, records)

    def _resolve(self, name: str) -> tuple[list[tuple[IPAddress, int]], str | None]:
        if name in self.hosts:
            address = ipaddress.ip_address(self.hosts[name])
            return ([(address, HOSTS_TTL)], None) if address.version == 4 else ([], "the name has no IPv4 address")
        if self.resolver is None:
            return [], "no resolver: this host's /etc/resolv.conf names no IPv4 nameserver"
        sent = _dns.query(secrets.randbelow(1 << 16), name, _dns.TYPE_A)
        deadline = time.monotonic() + min(DNS_TIMEOUT, self.policy.timeout)  # for the whole exchange
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as upstream:
            try:
                upstream.connect(self.resolver)
                upstream.send(sent)
                while True:
                    upstream.settimeout(max(0.001, deadline - time.monotonic()))
                    try:
                        rcode, records = _dns.parse_answer(upstream.recv(4096), sent)
                        break
                    except _dns.Truncated:
                        return [], "the answer was too large for UDP (no TCP fallback)"
                    except ValueError:
                        continue  # not the answer to this query: keep waiting for it, until the deadline
            except OSError as exc:
                return [], f"the resolver {self.resolver[0]} did not answer: {exc}"
        if rcode != _dns.NOERROR:
            return [], f"the resolver answered rcode {rcode}"
        found: list[tuple[IPAddress, int]] = [(a, max(1, min(ttl, MAX_TTL))) for a, ttl in records if a.version == 4]
        return (found, None) if found else ([], "the name has no IPv4 address")

    def _allow(self, records: list[tuple[IPAddress, int]], matching: list[Entry]) -> None:
        """Each address reachable for its TTL: on every port, or on the ports the entries name."""
        assert self.nft is not None  # nosec B101  # built
        ports = {e.port for e in matching}
        addresses = [(ipaddress.IPv4Address(a), ttl * 1000) for a, ttl in records]
        if None in ports:
            self.nft.elements(self.table, "resolved", [(a.packed, ms, 0) for a, ms in addresses])
        named = sorted(p for p in ports if p is not None)
        if named:
            self.nft.elements(self.table, "ports", [(_pair_key(a, p), ms, 0) for a, ms in addresses for p in named])
        self.nft.commit()  # acknowledged before the answer leaves: reachable once known

    def _log(self, host: str, verdict: str, reason: str | None, **fields: object) -> None:
        with contextlib.suppress(OSError):  # a full disk must not end the sandbox's DNS
            self.audit.network(kind="dns", host=host, verdict=verdict, reason=reason, **fields)

    # -- the end -----------------------------------------------------------------------------
    def finish(self) -> None:
        """The sandbox's traffic, per destination, into the audit log (at most ``MAX_LOGGED``
        refused destinations one by one, the rest in one sum); then the veth and table removed."""
        if self.nft is not None:
            with contextlib.suppress(OSError):
                received = {e.key: e for e in self.nft.dump_elements(self.table, "received")}
                for element in self.nft.dump_elements(self.table, "sent"):
                    back = received.pop(element.key, None)
                    self.audit.network(
                        kind="flow",
                        address=str(ipaddress.IPv4Address(element.key)),
                        verdict="allowed",
                        bytes_out=element.bytes,
                        bytes_in=back.bytes if back else 0,
                        packets_out=element.packets,
                    )
                dropped = sorted(self.nft.dump_elements(self.table, "dropped"), key=lambda e: -e.packets)
                for element in dropped[:MAX_LOGGED]:
                    address, port = ipaddress.IPv4Address(element.key[:4]), struct.unpack(">H", element.key[4:6])[0]
                    self.audit.network(
                        kind="flow", address=str(address), port=port, verdict="dropped",
                        packets_out=element.packets, bytes_out=element.bytes,
                    )  # fmt: skip
                if len(dropped) > MAX_LOGGED:
                    rest = dropped[MAX_LOGGED:]
                    self.audit.network(
                        kind="flow", address=None, verdict="dropped", destinations=len(rest),
                        packets_out=sum(e.packets for e in rest), bytes_out=sum(e.bytes for e in rest),
                    )  # fmt: skip
        self.teardown()

    def teardown(self) -> None:
        """The veth removed, then the table: the sandbox's way out goes before its filter."""
        if self.slot is not None:
            from pyroute2 import IPRoute

            with contextlib.suppress(Exception), IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=outer_name(self.slot)):
                    ipr.link("del", index=index)
            self.slot = None
        if self.nft is not None:
            with contextlib.suppress(OSError):
                self.nft.delete_table(self.table)
                self.nft.commit()
            self.nft.close()
            self.nft = None


_PAIR_TYPE = (_nft.TYPE_IPADDR << 6) | _nft.TYPE_INET_SERVICE


def _pair_key(address: ipaddress.IPv4Address, port: int) -> bytes:
    return address.packed + struct.pack(">H", port) + b"\0\0"  # the port in a 4-byte register


def _interval_elements(intervals: Iterable[tuple[int, int]]) -> list[tuple[bytes, int | None, int]]:
    """[start, end) intervals as nftables writes them: a start, then an end element."""
    keys: list[tuple[bytes, int | None, int]] = []
    intervals = sorted(intervals)
    if intervals and intervals[0][0] != 0:
        keys.append((bytes(4), None, _nft.SET_ELEM_INTERVAL_END))
    for start, end in intervals:
        keys.append((struct.pack(">I", start), None, 0))
        if end < 1 << 32:
            keys.append((struct.pack(">I", end), None, _nft.SET_ELEM_INTERVAL_END))
    return keys


def _sweep_orphans(nft: _nft.Nft, ipr: Any, ours: str) -> None:
    """Delete the tables of routers that ended without deleting theirs (killed): those whose
    veth is gone, i.e. whose sandbox is. The links are listed after the tables: a router
    makes its veth before its table, so a table listed without its veth listed later is an
    orphan; so is one named as the table about to be made (``ours``: this router's veth is
    new). A table whose veth is there stays: its sandbox lives, and stays filtered."""
    tables = [n for n in nft.table_names() if n.startswith("nsbox-") and n[6:].isdigit()]
    links = {str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}
    for name in tables:
        if name == ours or outer_name(int(name[6:])) not in links:
            nft.delete_table(name)
            with contextlib.suppress(OSError):  # another router's sweep may have been first
                nft.commit()


def _check_forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as sysctl:
        if sysctl.read().strip() != "1":
            raise _Refused(
                "check IPv4 forwarding in the uplink namespace",
                "net.ipv4.ip_forward is 0 there, so nothing the sandbox sends would be forwarded",
                "nsbox never changes it: turn it on in that namespace (sysctl -w net.ipv4.ip_forward=1), "
                "or give --net-uplink a network namespace that forwards",
            )


def _configure_inner(address: ipaddress.IPv4Address) -> None:
    """In the sandbox's network namespace: eth0 with its address, the gateway on the link,
    the default route through it, and no IPv6."""
    from pyroute2 import IPRoute

    write_sysctl(f"net.ipv6.conf.{INNER_NAME}.disable_ipv6", "1")
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=INNER_NAME)[0]
        ipr.addr("add", index=index, address=str(address), prefixlen=32)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst=f"{GATEWAY}/32", oif=index, scope=253)
        ipr.route("add", dst="0.0.0.0/0", gateway=str(GATEWAY), oif=index)
