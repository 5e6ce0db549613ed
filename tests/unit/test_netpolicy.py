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


# -- special-purpose addresses (IANA's IPv4 and IPv6 registries) and IPv6 forms of IPv4 --------


def reason(address: str, own: tuple[str, ...] = (), listed: tuple[str, ...] = ()) -> str | None:
    """Why ``address`` is refused (None: allowed), for a name listed by name only."""
    entries = parse_allowlist(["name.test", *listed])
    return check_addresses(entries, [ip(address)], own=[ip(a) for a in own]).reason


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "0.255.255.255", "10.0.0.0", "10.255.255.255", "100.64.0.0", "100.127.255.255", "127.0.0.1",
     "127.255.255.255", "169.254.0.1", "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.1",
     "192.0.0.255", "192.0.2.1", "192.0.2.255", "192.88.99.1", "192.88.99.255", "192.168.0.1", "192.168.255.255",
     "198.18.0.1", "198.19.255.255", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.254",
     "255.255.255.255"],
)  # fmt: skip
def test_every_ipv4_special_purpose_range_is_refused(address: str) -> None:
    assert reason(address) is not None


@pytest.mark.parametrize(
    "address",
    ["::", "::1", "100::1", "100::ffff:ffff:ffff:ffff", "100:0:0:1::1", "2001:2::1", "2001:10::1", "2001:20::1",
     "2001:1ff::1", "3fff::1", "3fff:fff:ffff::1", "5f00::1", "5fff::1", "fc00::1", "fd00::1", "fe80::1", "febf::1",
     "fec0::1", "feff::1", "ff02::1", "ff0e::1"],
)  # fmt: skip
def test_every_ipv6_special_purpose_range_that_is_not_globally_reachable_is_refused(address: str) -> None:
    assert reason(address) is not None


@pytest.mark.parametrize("address", ["1::1", "100:0:0:2::1", "200::1", "1fff::1", "4000::1", "8000::1", "e000::1"])
def test_ipv6_outside_the_global_unicast_space_2000_3_is_refused_as_reserved(address: str) -> None:
    assert "reserved" in str(reason(address)), reason(address)


@pytest.mark.parametrize(
    "address",
    ["198.51.100.1", "203.0.113.1", "2001:db8::1", "93.184.216.34", "192.0.1.1", "192.0.3.1", "192.88.98.1",
     "2606:4700::1", "2a00:1450::1", "2001:200::1"],
)  # fmt: skip
def test_public_addresses_and_the_documentation_ranges_the_tests_use_are_allowed(address: str) -> None:
    assert reason(address) is None


@pytest.mark.parametrize(
    ("address", "form", "embedded"),
    [
        ("::ffff:169.254.169.254", "IPv4-mapped", "169.254.169.254"),
        ("::ffff:10.0.0.5", "IPv4-mapped", "10.0.0.5"),
        ("::a9fe:a9fe", "IPv4-compatible", "169.254.169.254"),
        ("::a00:5", "IPv4-compatible", "10.0.0.5"),
        ("::ffff:0:a9fe:a9fe", "IPv4-translated", "169.254.169.254"),
        ("::ffff:0:c0a8:1", "IPv4-translated", "192.168.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64", "169.254.169.254"),
        ("64:ff9b::7f00:1", "NAT64", "127.0.0.1"),
        ("64:ff9b::a00:5", "NAT64", "10.0.0.5"),
        ("64:ff9b:1::a9fe:a9fe", "NAT64", "169.254.169.254"),
        ("2002:a9fe:a9fe::1", "6to4", "169.254.169.254"),
        ("2002:a00:5::1", "6to4", "10.0.0.5"),
        ("2002:7f00:1:1::1", "6to4", "127.0.0.1"),
        ("2001:0:a00:5::39cc:9bf5", "Teredo", "10.0.0.5"),  # server 10.0.0.5, client 198.51.100.10
        ("2001:0:c633:640a::5601:5601", "Teredo", "169.254.169.254"),  # server 198.51.100.10, client metadata
        ("2001:0:c633:640a::f5ff:fffa", "Teredo", "10.0.0.5"),  # the client 10.0.0.5, bits inverted
    ],
)
def test_ipv6_forms_that_embed_a_blocked_ipv4_are_refused_naming_it(address: str, form: str, embedded: str) -> None:
    why = reason(address)
    assert why is not None and form in why and embedded in why, why


@pytest.mark.parametrize(
    "address",
    ["::ffff:198.51.100.10", "::c633:640a", "::ffff:0:c633:640a", "64:ff9b:1::c633:640a", "64:ff9b:1:2::c633:640a"],
)
def test_ipv6_forms_that_are_not_globally_reachable_are_refused_whatever_they_embed(address: str) -> None:
    assert reason(address) is not None, "mapped, compatible, SIIT and local-use NAT64 are never destinations"


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::c633:640a", "64:ff9b::5db8:d822", "2002:c633:640a::1", "2002:5db8:d822:1::1",
     "2001:0:c633:640a::34ff:8ef4"],  # Teredo: server 198.51.100.10, client 203.0.113.11
)  # fmt: skip
def test_nat64_6to4_and_teredo_forms_of_public_ipv4_are_allowed(address: str) -> None:
    assert reason(address) is None


@pytest.mark.parametrize(
    "address",
    ["::ffff:198.51.100.7", "64:ff9b::c633:6407", "2002:c633:6407::1", "2001:0:c633:6407::34ff:8ef4",
     "2001:0:cb00:710b::39cc:9bf8", "198.51.100.7", "2001:db8::7"],
)  # fmt: skip
def test_an_ipv6_form_of_this_hosts_own_ipv4_is_refused(address: str) -> None:
    why = reason(address, own=("198.51.100.7", "2001:db8::7"))
    assert why is not None and "this host" in why, why


def test_an_exact_entry_lifts_the_block_of_that_exact_ipv6_form_only() -> None:
    assert reason("::a9fe:a9fe", listed=("::a9fe:a9fe",)) is None
    assert reason("::a9fe:a9ff", listed=("::a9fe:a9fe",)) is not None
    assert reason("64:ff9b::a9fe:a9fe", listed=("169.254.169.254",)) is not None, "the IPv4 is not the IPv6 form"
    assert reason("2002:a9fe:a9fe::1", listed=("2002::/16", "169.254.0.0/16")) is not None, "a range lifts nothing"
