"""nftables by netlink: the few messages routed mode needs, encoded here.

pyroute2 builds nsbox's links, addresses and routes (``_router``); its nftables messages
(0.9.7) are not used because they cannot express what this needs: ``NFTA_QUOTA_BYTES`` is
encoded as a 16-bit number there, and a dynset's nested expression goes through a class
attribute shared by every message. The nfnetlink format is small (netlink(7), the
``NFTA_*`` attributes of linux/netfilter/nf_tables.h), so it is written out here: TLV
attributes, one transaction per ``Batch``, every message acknowledged.

Where the kernel has it (6.9), a sandbox's table is owned by its router's socket
(``NFT_TABLE_F_OWNER``: no other process can change or flush it, not even ``nft flush
ruleset``) and persistent (``NFT_TABLE_F_PERSIST``): a router that dies leaves its table in
place, so the sandbox's traffic stays filtered (fail closed) until the table is deleted.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
NEWTABLE, GETTABLE, DELTABLE, NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM, GETSETELEM = 0, 1, 2, 3, 6, 9, 12, 13
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_ACK, _F_EXCL, _F_CREATE, _F_APPEND, _F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x800, 0x300
_NESTED = 0x8000
NFPROTO_INET, NFPROTO_IPV4 = 1, 2
TABLE_F_OWNER = 0x2  #: only the socket that made the table may change it
TABLE_F_PERSIST = 0x4  #: an owned table stays when its owner's socket closes (Linux 6.9)

# hooks (NF_INET_*) and chain types
HOOK_INPUT, HOOK_FORWARD, HOOK_OUTPUT, HOOK_POSTROUTING = 1, 2, 3, 4
# verdicts
DROP, ACCEPT, JUMP, RETURN = 0, 1, -3, -5
# registers: the verdict, a 16-byte one, and 4-byte ones (for concatenations)
REG_VERDICT, REG_1, REG32_00, REG32_01 = 0, 1, 8, 9
# meta keys
META_IIFNAME, META_OIFNAME, META_NFPROTO, META_L4PROTO = 6, 7, 15, 16
# payload bases
NETWORK_HEADER, TRANSPORT_HEADER = 1, 2
# cmp operators
EQ, NEQ = 0, 1
# set flags
SET_INTERVAL, SET_TIMEOUT, SET_EVAL, SET_CONCAT = 0x4, 0x10, 0x20, 0x80
# set key types (nft's datatypes; the kernel keeps them for nft list)
TYPE_IPADDR, TYPE_INET_SERVICE = 7, 13
# conntrack states (NF_CT_STATE_*_BIT)
CT_ESTABLISHED, CT_RELATED, CT_NEW = 0x2, 0x4, 0x8
SET_ELEM_INTERVAL_END = 0x1
IFNAMSIZ = 16
REPLY_TIMEOUT = 10.0  #: seconds to wait for the kernel's answer to a request


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute: length, type, payload padded to 4 bytes."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, *children: bytes) -> bytes:
    return attr(kind | _NESTED, b"".join(children))


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def be64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">Q", value))


def text(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def data(kind: int, value: bytes) -> bytes:
    """An NFTA_DATA_VALUE nested in ``kind``."""
    return nest(kind, attr(1, value))


def verdict_data(kind: int, code: int, chain: str | None = None) -> bytes:
    inner = be32(1, code) + (text(2, chain) if chain else b"")
    return nest(kind, nest(2, inner))  # NFTA_DATA_VERDICT: NFTA_VERDICT_CODE, _CHAIN


def ifname(name: str) -> bytes:
    """An interface name as meta iifname/oifname loads it: NUL-padded to IFNAMSIZ."""
    return name.encode().ljust(IFNAMSIZ, b"\0")


# --- expressions (NFTA_EXPR_NAME, NFTA_EXPR_DATA) -------------------------------------------
def expr(name: str, *attrs: bytes) -> bytes:
    return nest(1, text(1, name), nest(2, *attrs))  # an NFTA_LIST_ELEM


def meta(key: int, dreg: int = REG_1) -> bytes:
    return expr("meta", be32(1, dreg), be32(2, key))


def cmp(value: bytes, op: int = EQ, sreg: int = REG_1) -> bytes:
    return expr("cmp", be32(1, sreg), be32(2, op), data(3, value))


def payload(base: int, offset: int, length: int, dreg: int = REG_1) -> bytes:
    return expr("payload", be32(1, dreg), be32(2, base), be32(3, offset), be32(4, length))


def ct_state(dreg: int = REG_1) -> bytes:
    return expr("ct", be32(1, dreg), be32(2, 0))  # NFT_CT_STATE


def ct_mark_is(mark: int) -> list[bytes]:
    return [expr("ct", be32(1, REG_1), be32(2, 3)), cmp(struct.pack("=I", mark))]  # NFT_CT_MARK


def ct_mark_set(mark: int) -> list[bytes]:
    """The connection's mark set to ``mark`` (an immediate into a register, ct's SREG)."""
    load = expr("immediate", be32(1, REG_1), data(2, struct.pack("=I", mark)))
    return [load, expr("ct", be32(2, 3), be32(4, REG_1))]


def bitwise(mask: bytes, sreg: int = REG_1, dreg: int = REG_1) -> bytes:
    return expr("bitwise", be32(1, sreg), be32(2, dreg), be32(3, len(mask)), data(4, mask), data(5, b"\0" * len(mask)))


def lookup(set_name: str, sreg: int = REG_1, invert: bool = False) -> bytes:
    return expr("lookup", text(1, set_name), be32(2, sreg), be32(5, 1 if invert else 0))


def update(set_name: str, sreg: int = REG_1) -> bytes:
    """dynset update: the key added if missing; the element's own expressions (its counter) run."""
    return expr("dynset", text(1, set_name), be32(3, 1), be32(4, sreg))


def counter() -> bytes:
    return expr("counter")


def limit_over(per_second: float) -> bytes:
    """Matches what goes over ``per_second`` packets a second (burst: one second's worth)."""
    rate, unit = (max(1, round(per_second)), 1) if per_second >= 1 else (1, max(1, round(1 / per_second)))
    return expr("limit", be64(1, rate), be64(2, unit), be32(3, rate), be32(4, 0), be32(5, 1))


def quota_over(limit: int) -> bytes:
    """Matches once more than ``limit`` bytes have passed this rule."""
    return expr("quota", be64(1, limit), be32(2, 1))


def masquerade() -> bytes:
    return expr("masq")


def verdict(code: int, chain: str | None = None) -> bytes:
    return expr("immediate", be32(1, REG_VERDICT), verdict_data(2, code, chain))


# --- the matches routed mode writes, as expression lists -------------------------------------
def iifname_is(name: str) -> list[bytes]:
    return [meta(META_IIFNAME), cmp(ifname(name))]


def oifname_is(name: str, op: int = EQ) -> list[bytes]:
    return [meta(META_OIFNAME), cmp(ifname(name), op)]


def nfproto_is_not_ipv4() -> list[bytes]:
    return [meta(META_NFPROTO), cmp(bytes([NFPROTO_IPV4]), NEQ)]


def nfproto_is_ipv4() -> list[bytes]:
    return [meta(META_NFPROTO), cmp(bytes([NFPROTO_IPV4]))]


def ct_state_in(states: int) -> list[bytes]:
    return [ct_state(), bitwise(struct.pack("=I", states)), cmp(b"\0\0\0\0", NEQ)]


def daddr(reg: int = REG_1) -> bytes:
    return payload(NETWORK_HEADER, 16, 4, reg)


def saddr(reg: int = REG_1) -> bytes:
    return payload(NETWORK_HEADER, 12, 4, reg)


def dport(reg: int = REG_1) -> bytes:
    return payload(TRANSPORT_HEADER, 2, 2, reg)


def saddr_is(address: bytes) -> list[bytes]:
    return [saddr(), cmp(address)]


def l4proto_is(number: int) -> list[bytes]:
    return [meta(META_L4PROTO), cmp(bytes([number]))]


def daddr_dport(sreg_address: int = REG32_00, sreg_port: int = REG32_01) -> list[bytes]:
    """Destination address then port, in two 4-byte registers (an ``addr . port`` key)."""
    return [daddr(sreg_address), dport(sreg_port)]


# --- messages -------------------------------------------------------------------------------
@dataclass
class Element:
    """A set element read back: its key and, when the set counts, its counter."""

    key: bytes
    packets: int = 0
    bytes: int = 0
    expires_ms: int | None = None


class NftError(OSError):
    pass


class Nft:
    """A netfilter netlink socket in the calling process's network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.settimeout(REPLY_TIMEOUT)  # a kernel that never answers is an error, not a hang
        self._seq = 0
        self._pending: list[tuple[int, int, bytes]] = []

    # a transaction: add() the messages, commit() sends them all at once
    def add(self, kind: int, attrs: bytes, flags: int = _F_CREATE | _F_APPEND, family: int = NFPROTO_INET) -> None:
        self._pending.append((kind, flags, struct.pack("=BBH", family, 0, 0) + attrs))

    def table(self, name: str, flags: int = 0) -> None:
        self.add(NEWTABLE, text(1, name) + be32(2, flags), _F_CREATE | _F_EXCL)

    def delete_table(self, name: str) -> None:
        self.add(DELTABLE, text(1, name), 0)

    def chain(self, table: str, name: str, hook: int | None = None, priority: int = 0, kind: str = "filter") -> None:
        attrs = text(1, table) + text(3, name)
        if hook is not None:
            attrs += nest(4, be32(1, hook), be32(2, priority)) + be32(5, ACCEPT) + text(7, kind)
        self.add(NEWCHAIN, attrs)

    def rule(self, table: str, chain: str, expressions: Sequence[bytes]) -> None:
        self.add(NEWRULE, text(1, table) + text(2, chain) + nest(4, *expressions))

    def set(
        self, table: str, name: str, key_type: int, key_len: int, flags: int = 0, size: int = 0, counted: bool = False
    ) -> None:
        """A set; ``size``: at most that many elements (the kernel refuses more, and a dynset
        update that cannot add one does not match: rules must fail closed on it)."""
        self._seq += 1  # a set id, unique within the batch
        attrs = text(1, table) + text(2, name) + be32(3, flags) + be32(4, key_type) + be32(5, key_len)
        attrs += be32(10, self._seq)
        if size:
            attrs += nest(9, be32(1, size))  # NFTA_SET_DESC: NFTA_SET_DESC_SIZE
        if counted:
            attrs += nest(17, text(1, "counter"), nest(2))  # NFTA_SET_EXPR: a counter per element
        self.add(NEWSET, attrs)

    def elements(self, table: str, set_name: str, keys: Sequence[tuple[bytes, int | None, int]]) -> None:
        """Add (key, timeout in ms or None, flags) elements; an existing one gets the new timeout."""
        elems = []
        for key, timeout_ms, flags in keys:
            elem = data(1, key)
            if flags:
                elem += be32(3, flags)
            if timeout_ms is not None:
                elem += be64(4, timeout_ms)
            elems.append(nest(1, elem))
        self.add(NEWSETELEM, text(1, table) + text(2, set_name) + nest(3, *elems), _F_CREATE)

    def commit(self) -> None:
        """Send the batch as one transaction; raises NftError naming the message refused."""
        batch, waiting = b"", {}
        begin = struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
        begin_seq = self._next()  # a batch-level refusal (no nf_tables, no permission) answers this one
        waiting[begin_seq] = "the batch"
        batch += self._header(_BATCH_BEGIN, _F_REQUEST, begin, begin_seq)
        for kind, flags, body in self._pending:
            seq = self._next()
            waiting[seq] = f"message {kind}"
            batch += self._header((NFNL_SUBSYS_NFTABLES << 8) | kind, _F_REQUEST | _F_ACK | flags, body, seq)
        batch += self._header(_BATCH_END, _F_REQUEST, begin)
        self._pending = []
        self.sock.sendall(batch)
        while len(waiting) > 1:  # every message's answer; the batch's own comes only as an error
            for kind, seq, body in self._receive():
                if kind != _NLMSG_ERROR or seq not in waiting:
                    continue
                (code,) = struct.unpack_from("=i", body)
                what = waiting.pop(seq)
                if code:
                    raise NftError(-code, f"nftables refused {what}: {os.strerror(-code)}")

    def dump_elements(self, table: str, set_name: str) -> list[Element]:
        found: list[Element] = []
        for reply in self._dump(GETSETELEM, NFPROTO_INET, text(1, table) + text(2, set_name)):
            found += _elements(reply)
        return found

    def table_names(self) -> list[str]:
        """Every nftables table of this network namespace (all families)."""
        names = []
        for reply in self._dump(GETTABLE, 0, b""):
            names += [value.rstrip(b"\0").decode() for kind, value in attributes(reply) if kind == 1]
        return names

    def _dump(self, kind: int, family: int, attrs: bytes) -> Iterator[bytes]:
        """The attributes of each message a dump request answers with."""
        seq = self._next()
        body = struct.pack("=BBH", family, 0, 0) + attrs
        self.sock.sendall(self._header((NFNL_SUBSYS_NFTABLES << 8) | kind, _F_REQUEST | _F_DUMP, body, seq))
        while True:
            for reply_kind, reply_seq, reply in self._receive():
                if reply_seq != seq:
                    continue
                if reply_kind == _NLMSG_DONE:
                    return
                if reply_kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply)
                    raise NftError(-code, f"nftables: cannot list: {os.strerror(-code)}")
                yield reply[4:]

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _header(self, kind: int, flags: int, body: bytes, seq: int = 0) -> bytes:
        return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body

    def _receive(self) -> Iterator[tuple[int, int, bytes]]:
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            raise NftError(errno.ETIMEDOUT, f"nftables did not answer in {REPLY_TIMEOUT:g} s") from None
        offset = 0
        while offset + 16 <= len(chunk):
            length, kind, _, seq, _ = struct.unpack_from("=IHHII", chunk, offset)
            if length < 16:
                raise NftError(errno.EPROTO, "nftables: a malformed reply")
            yield kind, seq, chunk[offset + 16 : offset + length]
            offset += (length + 3) & ~3


def attributes(blob: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(blob):
        size, kind = struct.unpack_from("=HH", blob, offset)
        if size < 4:
            return
        yield kind & ~_NESTED & 0x7FFF, blob[offset + 4 : offset + size]
        offset += (size + 3) & ~3


def _elements(blob: bytes) -> list[Element]:
    """The elements of one NEWSETELEM message (its attributes, past the nfgenmsg)."""
    found = []
    for kind, value in attributes(blob):
        if kind != 3:  # NFTA_SET_ELEM_LIST_ELEMENTS
            continue
        for _, elem in attributes(value):
            element = Element(b"")
            for ekind, evalue in attributes(elem):
                if ekind == 1:  # key: NFTA_DATA_VALUE
                    element.key = dict(attributes(evalue)).get(1, b"")
                elif ekind == 5:  # expiration, ms
                    element.expires_ms = struct.unpack(">Q", evalue)[0]
                elif ekind in (7, 11):  # NFTA_SET_ELEM_EXPR(ESSIONS)
                    _read_counter(evalue, element, ekind == 11)
            found.append(element)
    return found


def _read_counter(blob: bytes, element: Element, listed: bool) -> None:
    exprs = [v for _, v in attributes(blob)] if listed else [blob]
    for one in exprs:
        fields = dict(attributes(one))
        if fields.get(1, b"").rstrip(b"\0") == b"counter":
            counts = dict(attributes(fields.get(2, b"")))
            element.bytes = struct.unpack(">Q", counts.get(1, bytes(8)))[0]
            element.packets = struct.unpack(">Q", counts.get(2, bytes(8)))[0]
