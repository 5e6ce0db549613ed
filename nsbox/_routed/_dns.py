"""The DNS wire format (RFC 1035), as far as routed mode's resolver speaks it: one question
per query, A and AAAA answers, names with compression pointers in answers.

Everything a sandbox sends is untrusted: a query is parsed strictly (one question, no
compression, labels of letters, digits, ``-`` and ``_`` only, at most ``MAX_NAME``
characters of name) and anything else is answered FORMERR or dropped: a label holding a dot
or any other byte would be one name here and another once sent on. An upstream answer is
checked against the query it answers (id, question) before any record in it is believed.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

#: an address and its TTL, as answered
Record = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
MAX_NAME = 253  #: characters of a name in dotted form (RFC 1035 2.3.4: 255 octets on the wire)
MAX_UDP = 512  #: an answer's size without EDNS (RFC 1035 4.2.1)
_HEADER = struct.Struct(">HHHHHH")
_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")  #: what a label of a name we resolve may hold
_QR, _RD, _RA, _TC = 0x8000, 0x0100, 0x0080, 0x0200


class Truncated(ValueError):
    """The reply to our query, cut short (too large for UDP): no use waiting for another."""


@dataclass(frozen=True)
class Query:
    id: int
    name: str  #: lower case, no trailing dot
    qtype: int
    qclass: int
    flags: int
    question: bytes  #: as it came: echoed in the answer


def _read_labels(packet: bytes, offset: int) -> tuple[list[bytes], int]:
    labels: list[bytes] = []
    while True:
        if offset >= len(packet):
            raise ValueError("a name runs past the packet")
        size = packet[offset]
        if size & 0xC0:
            raise ValueError("a compressed or extended label where none may be")
        offset += 1
        if size == 0:
            return labels, offset
        labels.append(packet[offset : offset + size])
        if len(labels[-1]) != size:
            raise ValueError("a label runs past the packet")
        offset += size


def parse_query(packet: bytes) -> Query:
    """A query from a sandbox; ValueError if it is not one question of class IN."""
    if len(packet) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, _ = _HEADER.unpack_from(packet)
    if flags & _QR or (flags >> 11) & 0xF or qdcount != 1 or ancount or nscount:
        raise ValueError("not a standard query with one question")
    labels, end = _read_labels(packet, _HEADER.size)
    if end + 4 > len(packet):
        raise ValueError("the question has no type and class")
    qtype, qclass = struct.unpack_from(">HH", packet, end)
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a host name: each label letters, digits, '-' or '_'")  # no '.' or bytes inside
    name = b".".join(labels).decode("ascii").lower()
    if len(name) > MAX_NAME:
        raise ValueError("not a host name: longer than 253")
    return Query(qid, name, qtype, qclass, flags, packet[_HEADER.size : end + 4])


def answer(query: Query, rcode: int, records: Sequence[Record] = ()) -> bytes:
    """The reply to ``query``: ``rcode`` and, for NOERROR, A/AAAA ``records`` (address, TTL)."""
    rrs = b""
    count = 0
    for address, ttl in records:
        rtype = TYPE_A if address.version == 4 else TYPE_AAAA
        rr = struct.pack(">HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(address.packed)) + address.packed
        if _HEADER.size + len(query.question) + len(rrs) + len(rr) > MAX_UDP:
            break
        rrs += rr
        count += 1
    flags = _QR | _RA | (query.flags & _RD) | rcode
    return _HEADER.pack(query.id, flags, 1, count, 0, 0) + query.question + rrs


def error(packet: bytes, rcode: int) -> bytes | None:
    """A header-only reply with ``rcode`` to a packet that did not parse (None if no header)."""
    if len(packet) < _HEADER.size or packet[2] & 0x80:
        return None
    (qid,) = struct.unpack_from(">H", packet)
    return _HEADER.pack(qid, _QR | _RA | rcode, 0, 0, 0, 0)


def query(qid: int, name: str, qtype: int) -> bytes:
    """A recursive query for ``name``."""
    labels = b"".join(bytes([len(p)]) + p for p in name.encode("ascii").split(b".")) + b"\0"
    return _HEADER.pack(qid, _RD, 1, 0, 0, 0) + labels + struct.pack(">HH", qtype, CLASS_IN)


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        if offset >= len(packet):
            raise ValueError("a name runs past the packet")
        size = packet[offset]
        if size & 0xC0 == 0xC0:
            return offset + 2
        if size & 0xC0:
            raise ValueError("an extended label")
        offset += 1 + size
        if size == 0:
            return offset


def parse_answer(packet: bytes, sent: bytes) -> tuple[int, list[Record]]:
    """An upstream reply to the query ``sent``: its rcode and its A/AAAA records (address,
    TTL). ValueError if it is not a reply to that query."""
    if len(packet) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    qid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(packet)
    question = sent[_HEADER.size :]
    if qid != struct.unpack_from(">H", sent)[0] or not flags & _QR or qdcount != 1:
        raise ValueError("not the reply to our query")
    end = _HEADER.size + len(question)
    if packet[_HEADER.size : end].lower() != question.lower():
        raise ValueError("a reply to another question")
    if flags & _TC:
        raise Truncated("a truncated reply")
    records: list[Record] = []
    offset = end
    for _ in range(ancount):
        offset = _skip_name(packet, offset)
        if offset + 10 > len(packet):
            raise ValueError("a record runs past the packet")
        rtype, rclass, ttl, size = struct.unpack_from(">HHIH", packet, offset)
        offset += 10
        rdata = packet[offset : offset + size]
        if len(rdata) != size:
            raise ValueError("a record runs past the packet")
        offset += size
        if rclass == CLASS_IN and (rtype, size) in ((TYPE_A, 4), (TYPE_AAAA, 16)):
            records.append((ipaddress.ip_address(rdata), ttl))
    return flags & 0xF, records
