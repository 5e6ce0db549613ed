"""The egress policy's decisions, without a network: entries, hosts, ports, addresses."""

from __future__ import annotations

import ipaddress

import pytest

from nsbox import NetworkPolicy, SpecError
from nsbox._netpolicy import Entry, check_addresses, check_host, parse_allowlist

ip = ipaddress.ip_address


def test_entries_parse_names_wildcards_ips_cidrs_and_ports() -> None:
    assert Entry.parse("API.example.com.").name == "api.example.com"
    assert Entry.parse("*.example.com").suffix == ".example.com"
    assert Entry.parse("203.0.113.0/24:443").port == 443
    assert Entry.parse("[2001:db8::1]:8443").exact_address() == ip("2001:db8::1")
    for bad in ("", " ", "a b", "host:0", "host:99999", "exa*mple.com", "-x.com", "*.", "x" * 300):
        with pytest.raises(SpecError):
            Entry.parse(bad)


def test_hosts_must_be_listed_and_wildcards_need_a_subdomain() -> None:
    entries = parse_allowlist(["allowed.test", "*.svc.test", "198.51.100.0/24", "203.0.113.7:22"])
    assert check_host(entries, "allowed.test", 443).allowed
    assert check_host(entries, "ALLOWED.test.", 80).allowed
    assert check_host(entries, "a.b.svc.test", 80).allowed
    assert not check_host(entries, "svc.test", 80).allowed, "*.domain is not the bare domain"
    assert not check_host(entries, "evilallowed.test", 80).allowed
    assert check_host(entries, "198.51.100.99", 80).allowed
    assert not check_host(entries, "denied.test", 80).allowed


def test_sensitive_ports_need_an_entry_that_names_them() -> None:
    entries = parse_allowlist(["allowed.test", "203.0.113.7:22"])
    for port in (22, 25, 2375, 6443, 10250):
        assert not check_host(entries, "allowed.test", port).allowed
    assert check_host(entries, "203.0.113.7", 22).allowed
    assert not check_host(entries, "203.0.113.7", 80).allowed, "an entry with a port allows only that port"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254"],
)  # fmt: skip
def test_blocked_addresses_are_refused_after_resolution(address: str) -> None:
    entries = parse_allowlist(["rebind.test"])
    assert not check_addresses(entries, [ip(address)], own=()).allowed


def test_an_exact_ip_entry_lifts_the_block_for_that_address_only() -> None:
    entries = parse_allowlist(["10.0.0.5", "10.0.0.0/8"])
    assert check_addresses(entries, [ip("10.0.0.5")], own=()).allowed
    assert not check_addresses(entries, [ip("10.0.0.6")], own=()).allowed, "a CIDR does not unblock"


def test_a_name_with_any_blocked_address_is_refused_and_own_addresses_are_blocked() -> None:
    entries = parse_allowlist(["mixed.test"])
    assert not check_addresses(entries, [ip("198.51.100.1"), ip("10.0.0.1")], own=()).allowed
    assert not check_addresses(entries, [ip("198.51.100.1")], own=[ip("198.51.100.1")]).allowed
    assert check_addresses(entries, [ip("198.51.100.1"), ip("2001:db8::1")], own=()).allowed
    assert not check_addresses(entries, [], own=()).allowed


def test_the_policy_validates_its_options() -> None:
    policy = NetworkPolicy("allow", ["a.test"], hosts={"A.test": "198.51.100.1"}, max_bytes="1M")
    assert policy.hosts == (("a.test", "198.51.100.1"),) and policy.max_bytes == 1 << 20
    for bad in (
        {"mode": "open"},
        {"mode": "none", "allowed_hosts": ["a.test"]},
        {"mode": "allow", "allowed_hosts": "a.test"},
        {"mode": "allow", "rate": 0},
        {"mode": "allow", "timeout": None},
        {"mode": "allow", "hosts": {"a.test": "not-an-ip"}},
        {"mode": "allow", "uplink": "/no/such/netns"},
    ):
        with pytest.raises(SpecError):
            NetworkPolicy(**bad)  # type: ignore[arg-type]
