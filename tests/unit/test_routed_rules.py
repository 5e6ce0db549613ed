"""Routed mode's pure parts: the blocked ranges as the kernel's interval set holds them, and
the DNS wire format its resolver speaks (a sandbox's queries are untrusted input)."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest

from nsbox._netpolicy import blocked_reason
from nsbox._routed import _dns, _nft
from nsbox._routed._addresses import blocked_intervals
from nsbox._routed._router import _interval_elements


def _blocked(intervals: list[tuple[int, int]], address: str) -> bool:
    value = int(ipaddress.IPv4Address(address))
    return any(start <= value < end for start, end in intervals)


def test_the_kernels_blocked_set_decides_as_the_proxy_does() -> None:
    own = [ipaddress.IPv4Address("203.0.113.77")]
    intervals = blocked_intervals(own)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(intervals)), "disjoint, sorted, merged"
    samples = ["10.1.2.3", "127.0.0.1", "169.254.169.254", "100.64.0.1", "192.168.1.1", "0.0.0.0", "224.0.0.1",
               "255.255.255.255", "8.8.8.8", "198.51.100.10", "203.0.113.77", "203.0.113.78", "192.0.0.9",
               "192.31.196.1", "172.15.255.255", "172.16.0.0", "172.31.255.255", "172.32.0.0"]  # fmt: skip
    for address in samples:
        expected = blocked_reason(ipaddress.IPv4Address(address), own) is not None
        assert _blocked(intervals, address) == expected, address


def test_intervals_are_written_as_nftables_writes_them() -> None:
    keys = _interval_elements([(10, 20), (0xF0000000, 1 << 32)])
    end = _nft.SET_ELEM_INTERVAL_END
    assert keys == [
        (bytes(4), None, end),  # everything below the first start is outside
        (struct.pack(">I", 10), None, 0),
        (struct.pack(">I", 20), None, end),
        (struct.pack(">I", 0xF0000000), None, 0),  # open to the top: no end element
    ]


def test_a_query_parses_and_is_answered_with_its_question() -> None:
    packet = _dns.query(0x1234, "Api.Test", _dns.TYPE_A)
    query = _dns.parse_query(packet)
    assert (query.id, query.name, query.qtype, query.qclass) == (0x1234, "api.test", _dns.TYPE_A, _dns.CLASS_IN)
    reply = _dns.answer(query, _dns.NOERROR, [(ipaddress.IPv4Address("198.51.100.10"), 300)])
    rcode, records = _dns.parse_answer(reply, packet)
    assert (rcode, records) == (_dns.NOERROR, [(ipaddress.IPv4Address("198.51.100.10"), 300)])
    assert _dns.parse_answer(_dns.answer(query, _dns.NXDOMAIN), packet) == (_dns.NXDOMAIN, [])


@pytest.mark.parametrize(
    "packet",
    [
        b"\x12\x34",  # shorter than a header
        _dns.query(1, "a.test", 1)[:12] + b"\xc0\x0c\x00\x01\x00\x01",  # a compression pointer in a question
        b"\x00\x01\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x01a\x00\x00\x01\x00\x01" * 2,  # two questions
        b"\x00\x01\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01",  # a response, not a query
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab",  # a label past the end
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00",  # no type and class
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"b" * 63
        + b"\x3f"
        + b"c" * 63
        + b"\x3f"
        + b"d" * 63
        + b"\x00\x00\x01\x00\x01",  # a name over 253
    ],
)
def test_malformed_queries_are_refused(packet: bytes) -> None:
    with pytest.raises(ValueError):
        _dns.parse_query(packet)


def test_an_answer_to_another_query_is_not_believed() -> None:
    sent = _dns.query(7, "api.test", _dns.TYPE_A)
    other = _dns.answer(_dns.parse_query(_dns.query(8, "api.test", 1)), 0, [(ipaddress.IPv4Address("192.0.2.1"), 5)])
    with pytest.raises(ValueError, match="not the reply"):
        _dns.parse_answer(other, sent)
    spoofed = _dns.answer(_dns.parse_query(_dns.query(7, "evil.test", 1)), 0, [(ipaddress.IPv4Address("192.0.2.1"), 5)])
    with pytest.raises(ValueError, match="another question"):
        _dns.parse_answer(spoofed, sent)
    truncated = bytearray(_dns.answer(_dns.parse_query(sent), 0))
    truncated[2] |= 0x02
    with pytest.raises(ValueError, match="truncated"):
        _dns.parse_answer(bytes(truncated), sent)


def test_answers_with_compressed_names_and_other_records_yield_the_addresses() -> None:
    sent = _dns.query(9, "www.api.test", _dns.TYPE_A)
    head = struct.pack(">HHHHHH", 9, 0x8180, 1, 2, 0, 0) + sent[12:]
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, 2) + b"\xc0\x10"  # www.api.test CNAME api.test
    a_record = b"\xc0\x10" + struct.pack(">HHIH", 1, 1, 30, 4) + bytes([198, 51, 100, 10])
    assert _dns.parse_answer(head + cname + a_record, sent) == (0, [(ipaddress.IPv4Address("198.51.100.10"), 30)])
    with pytest.raises(ValueError, match="past the packet"):
        _dns.parse_answer(head + cname + a_record[:-2], sent)


@pytest.mark.parametrize(
    "labels",
    [
        [b"data", b"attacker", b"org.", b".\x00", b"x", b"example", b"com"],  # a dot inside a label
        [b"a b", b"example", b"com"],  # a space
        [b"\xff", b"example", b"com"],  # not ASCII
        [b"a\x00", b"example", b"com"],  # a NUL
    ],
)
def test_a_name_is_one_name_here_and_upstream(labels: list[bytes]) -> None:
    """A label with a dot (or any byte but letters, digits, '-', '_') would match an allowed
    *.example.com here and be another name once re-encoded for the upstream resolver."""
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    packet = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"
    with pytest.raises(ValueError, match="not a host name"):
        _dns.parse_query(packet)
